"""Test environment: a private SLAFLOW_HOME and a private Ray cluster on other ports.

Set at import (before Ray or Airflow are imported, as both read their environment then), so
the suite never touches a developer's demo cluster, MLflow store or Airflow database. The
embedded engines are real: a Ray head started with ``ray start --block`` (stopped at the
end), Spark ``local[*]``, MLflow on SQLite.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Where tests leave what a person reads after a run: screenshots, task seconds, the chaos
#: figures (``SLAFLOW_TEST_ARTIFACTS`` moves it).
ARTIFACTS = Path(os.environ.get("SLAFLOW_TEST_ARTIFACTS", REPO / "test-artifacts"))
_HOME = Path(tempfile.mkdtemp(prefix="slaflow-test-"))
for _var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI"):
    os.environ.pop(_var, None)
os.environ.update(
    {
        "SLAFLOW_HOME": str(_HOME),
        "SLAFLOW_RAY_ADDRESS": "127.0.0.1:6410",
        "SLAFLOW_RAY_DASHBOARD_URL": "http://127.0.0.1:8266",
        "SLAFLOW_SERVE_PORT": "8011",
        # logical CPUs: every served model holds ~1.1 (router, warm and batch tiers) while later
        # tests train; 4 left too little once three models were served
        "SLAFLOW_LOCAL_RAY_CPUS": "8",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(_HOME / "ray" / "auth_token"),
        "AIRFLOW_HOME": str(_HOME / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # one replica shape keeps each DAG run's serving profile short on a 2-core CI machine
        "SLAFLOW_PROFILE_CPUS": "0.5",
        "SLAFLOW_PROFILE_BATCHES": "1",  # batching is covered by the routing integration tests
    }
)


logging.getLogger("py4j").setLevel(logging.WARNING)  # its exit-time log hits closed streams


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Cheap layers first, so a broken policy fails the run in seconds.
    order = {"unit": 0, "integration": 1, "e2e": 2, "cluster": 3}

    def rank(item: pytest.Item) -> int:
        return min((order[m.name] for m in item.iter_markers() if m.name in order), default=1)

    items.sort(key=rank)


#: Outcome of each ``chaos`` test (its figures: ``tests/reliability.py``).
_CHAOS_OUTCOMES: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A chaos test's outcome, its parametrized cases as one (failed if any case failed)."""
    from tests.reliability import test_key

    if "chaos" not in report.keywords:
        return
    if report.when == "call" or report.outcome != "passed":  # a failed setup counts too
        key = test_key(report.nodeid)
        if _CHAOS_OUTCOMES.get(key) != "failed":
            _CHAOS_OUTCOMES[key] = report.outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests import reliability

    out = reliability.write(_CHAOS_OUTCOMES)
    if out is not None:
        print(f"\n[slaflow] fault and fuzz figures: {out}")


@pytest.fixture(scope="session")
def slaflow_home() -> Path:
    return _HOME


#: The suite's own Ray cluster, once a test started it (``ray_cluster``).
_SUITE_CLUSTER: list[Any] = []


def _stop_suite_engines() -> None:
    """Stop the suite's Ray cluster (with whatever it still serves) and Spark session."""
    import sys

    if "ray" in sys.modules:
        import ray

        ray.shutdown()
    while _SUITE_CLUSTER:
        _SUITE_CLUSTER.pop().stop()
    if "pyspark" in sys.modules:
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None:
            active.stop()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The cluster tests start a topology of their own on the same 2 cores: the suite's
    engines, idle by then, would only take CPU from it (they run last: see the ordering)."""
    if item.get_closest_marker("cluster") is not None and _SUITE_CLUSTER:
        _stop_suite_engines()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    from slaflow.local_cluster import LocalRayCluster

    cluster = LocalRayCluster.from_env()
    if cluster.start():
        _SUITE_CLUSTER.append(cluster)
    yield cluster
    _stop_suite_engines()


@pytest.fixture(scope="session")
def tracking_uri() -> str:
    from operators.hooks import MlflowHook

    hook = MlflowHook()
    assert hook.client is not None  # creates the store folder, sets process-wide URIs
    return hook.tracking_uri


@pytest.fixture
def spark() -> Any:
    """The process's session on the default master (created once, then reused by Spark's
    getOrCreate; a test on a standalone master stops it and the next test gets a new one)."""
    from operators.hooks import SparkHook

    return SparkHook().session("slaflow-tests")


@pytest.fixture(scope="session")
def prepared(slaflow_home: Path) -> dict[str, Any]:
    from operators.hooks import SparkHook
    from spark_jobs.prepare import run_prepare

    return run_prepare(
        SparkHook().session("slaflow-tests"),
        source="sklearn:digits",
        label_column="label",
        output_dir=str(slaflow_home / "data" / "fixture"),
        validation_fraction=0.15,
        test_fraction=0.15,
        seed=7,
        cache_dir=slaflow_home / "datasets",
    )


def job_runner(log: Any) -> Any:
    """A ``RayJobRunner`` on the suite's cluster, specs on the suite's shared storage."""
    from operators.hooks import RayHook
    from operators.ray_job import RayJobRunner
    from slaflow.settings import Endpoints

    return RayJobRunner(
        RayHook().job_client, log, spec_dir=f"{Endpoints.from_env().data_dir}/job_specs"
    )


def train_spec(
    prepared: dict[str, Any], tracking_uri: str, run_id: str, run_name: str, **overrides: Any
) -> dict[str, Any]:
    """A training job's spec as the train task builds it (``ray_jobs.specs``) for a small
    contract; ``overrides`` replace spec keys."""
    from policies import RunContract
    from ray_jobs.specs import training_spec
    from slaflow.settings import Endpoints

    contract = RunContract.from_dict(
        {
            "hidden_units": [32],
            "learning_rate": 0.01,
            "batch_size": 64,
            "max_epochs": 3,
            "seed": 7,
            "deadline_s": 300.0,
            "max_workers": 2,
            "resize_policy": "static",
            "on_target_unreachable": "continue",
        }
    )
    spec = training_spec(
        contract,
        prepared,
        run_name=run_name,
        storage_path=Endpoints.from_env().ray_storage,
        tracking_uri=tracking_uri,
        mlflow_run_id=run_id,
        started_at=time.time(),
        stop_accuracy=0.999,
        num_workers=2,
        prior_epochs=3,
        throughput={"shape": "cpu", "epoch_s": {"1": 1.0, "2": 0.8}, "startup_s": 10.0},
    )
    spec.update(overrides)
    return spec


@pytest.fixture(scope="session")
def trained(ray_cluster: Any, prepared: dict[str, Any], tracking_uri: str) -> dict[str, Any]:
    """One real Ray Train run (2 workers, 3 epochs, fed by Ray Data), shared by the train and
    serve tests."""
    from mlflow_config import registry as reg
    from operators.hooks import MlflowHook

    client = MlflowHook().client
    exp = reg.get_or_create_experiment(client, "slaflow/tests", MlflowHook().artifact_location)
    run_id, _ = reg.find_or_create_run(client, exp, "fixture-run", "fixture", {})
    logs: list[str] = []
    runner = job_runner(logs.append)
    result = runner.run(
        base_id="slaflow-train-fixture",
        module="ray_jobs.train",
        # fed by Ray Data's streaming split (other tests' small splits read their files)
        spec=train_spec(prepared, tracking_uri, run_id, "fixture-run", ray_data_min_bytes=0),
        timeout_s=600,
    )
    return {
        "result": result,
        "run_id": run_id,
        "logs": logs,
        "runner": runner,
        "submission_id": runner.last_submission_id,
    }


def log_untrained_model(
    run_id: str, prepared: dict[str, Any], artifact_path: str = "wrong_model"
) -> str:
    """Log a model that answers wrongly (the right features and classes, never trained) on
    ``run_id``; return its ``runs:/`` URI. Stands in for a serving fault: a version whose
    evaluation looked fine but whose served artifact is not what was evaluated."""
    import mlflow

    from ray_jobs.model_format import ModelMetadata, build_mlp, export_saved_model

    model = build_mlp(
        len(prepared["feature_names"]),
        len(prepared["classes"]),
        [8],
        prepared["feature_mean"],
        prepared["feature_std"],
        seed=123,
    )
    with tempfile.TemporaryDirectory() as tmp:
        export_saved_model(
            model,
            ModelMetadata(tuple(prepared["feature_names"]), tuple(prepared["classes"]), (8,)),
            Path(tmp),
        )
        mlflow.MlflowClient().log_artifacts(run_id, tmp, artifact_path)
    return f"runs:/{run_id}/{artifact_path}"


def tier(
    route: str = "warm",
    *,
    replicas: int | None = 1,
    autoscaler: Any = None,
    batch: int = 8,
    ongoing: int = 16,
    queued: int = 64,
) -> dict[str, Any]:
    """One small tier of a version, as a ``ServeHook.deploy_version`` spec holds it."""
    from policies import TierSettings

    return TierSettings(
        route=route,
        num_cpus=0.25,
        num_gpus=0.0,
        resource="",
        max_ongoing_requests=ongoing,
        max_queued_requests=queued,
        max_batch_size=batch,
        batch_wait_timeout_s=0.001,
        initial_replicas=replicas or 1,
        replicas=None if autoscaler else replicas,
        autoscaler=autoscaler,
    ).to_dict()
