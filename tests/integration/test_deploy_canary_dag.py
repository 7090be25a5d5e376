"""The deploy task's automatic canary rollback, in a real Airflow run of ``ml_lifecycle``
(``dag.test``) against real Ray Serve and the real MLflow registry.

v1 (the trained model) is served by the DAG's deploy task. v2 is then made champion by
hand (no ``previous_champion``: the rollback must restore what serves), but its artifact is
an untrained network: its evaluation claimed 0.99, what is served answers wrongly, the fault
a canary exists to catch. The next deploy must put v2 beside v1, see its answers disagree at
the 10% step, send all traffic back to v1, move ``champion`` back, mark v2 and fail the
task, with no failed request from a client calling throughout.

Its first try is killed (SIGKILL, as a lost worker or the OOM killer does: no ``on_kill``
can run) once v2 takes its 10% share; the split is left as it was, both versions answering.
The retry is the same run again (``dag.test`` with the same dates gives the same run id, so
the same lease holder, as an Airflow retry has): it finds v2's application running, runs
the canary again and restores one routing.

Only ``plan`` and ``deploy`` run (``mark_success_pattern`` marks the rest done): the versions
are registered by the test, each with a serving profile on its run, as ``profile_serving``
leaves it, so the deploy task reads everything from the registry, as it does for a version
promoted by hand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import log_untrained_model

pytestmark = pytest.mark.integration

NAME = "canary-dag-model"
CONTRACT = {
    "model_name": NAME,
    "target_accuracy": 0.5,
    "latency_slo_ms": 1000.0,
    "expected_rps": 2.0,
    "peak_rps": 5.0,
    "serving_tiers": "cpu_on_demand",
}
ONLY_PLAN_AND_DEPLOY = r"(?!plan$|deploy$).*"


def _log_profile(client: Any, run_id: str, accuracy: float) -> str:
    """The profile document ``profile_serving`` writes (its numbers are this machine's, for a
    0.25-CPU replica); the planner chooses from it."""
    client.log_dict(
        run_id,
        {
            "variants": [{"name": "full", "accuracy": accuracy, "cold_start_s": 5.0}],
            "points": [
                {
                    "variant": "full",
                    "num_cpus": 0.25,
                    "max_batch_size": 1,
                    "p50_ms": 12.0,
                    "p99_ms": 40.0,
                    "capacity_rps": 60.0,
                    "row_ms": 0.05,
                }
            ],
            "variant_uri": "",
        },
        "serving/profile.json",
    )
    return f"runs:/{run_id}/serving/profile.json"


def _register(client: Any, source: str, run_id: str, accuracy: float) -> str:
    from mlflow_config import registry as reg

    client.log_metric(run_id, "test_accuracy", accuracy)
    version, _ = reg.register_version(client, NAME, source, run_id, {}, "canary DAG test")
    client.set_model_version_tag(
        NAME, version.version, reg.TAG_SERVING_PROFILE, _log_profile(client, run_id, accuracy)
    )
    return str(version.version)


def _deploy_through_the_dag(when: datetime | None = None) -> Any:
    """A run of plan and deploy; ``when`` (its logical date and run-after) fixes the run id:
    the same ``when`` again is the same run retried."""
    from slaflow import cli

    dates: dict[str, Any] = {} if when is None else {"run_after": when, "logical_date": when}
    return cli.load_dag().test(
        run_conf=CONTRACT, mark_success_pattern=ONLY_PLAN_AND_DEPLOY, **dates
    )


#: ``_deploy_through_the_dag`` in a process of its own, for the test to kill.
_KILLED_TRY = (
    "import datetime, json, sys; from slaflow import cli; cli.airflow_db_ready(); "
    "when = datetime.datetime.fromisoformat(sys.argv[1]); "
    "cli.load_dag().test(run_after=when, logical_date=when, run_conf=json.loads(sys.argv[2]), "
    "mark_success_pattern=sys.argv[3])"
)


def _kill_during_the_canary(when: datetime, url: str, new: str, timeout_s: float = 240) -> float:
    """Start the deploy in a process of its own and SIGKILL it once the router gives ``new``
    a canary share; returns that share."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_TRY, when.isoformat(), json.dumps(CONTRACT)]
        + [ONLY_PLAN_AND_DEPLOY],
        env=os.environ.copy(),
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"")[-3000:]
            assert time.monotonic() < deadline, "the canary never started"
            canary = requests.get(url, timeout=10).json().get("canary") or {}
            if canary.get("candidate") == new:
                os.killpg(proc.pid, signal.SIGKILL)
                return float(canary.get("share", 0.0))
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def versions(trained: dict[str, Any], prepared: dict[str, Any]) -> Iterator[dict[str, str]]:
    from slaflow import cli

    cli.airflow_db_ready()
    from mlflow_config import registry as reg
    from operators.hooks import MlflowHook

    client = MlflowHook().client
    exp = reg.get_or_create_experiment(client, "slaflow/tests", MlflowHook().artifact_location)
    good_run, _ = reg.find_or_create_run(client, exp, "canary-dag-good", "canary-dag-good", {})
    bad_run, _ = reg.find_or_create_run(client, exp, "canary-dag-bad", "canary-dag-bad", {})
    v1 = _register(client, trained["result"]["model_uri"], good_run, 0.9)
    # what its (faulty) evaluation said; the artifact was never trained
    v2 = _register(client, log_untrained_model(bad_run, prepared), bad_run, 0.99)
    yield {"v1": v1, "v2": v2}
    from operators.hooks import ServeHook

    ServeHook().undeploy(NAME)


@pytest.mark.chaos
def test_a_wrong_canary_is_rolled_back_by_the_deploy_task(
    versions: dict[str, str], prepared: dict[str, Any]
) -> None:
    from operators.hooks import MlflowHook, RayHook, ServeHook
    from ray_jobs.data_io import read_xy
    from slaflow.cli import task_results

    client = MlflowHook().client
    v1, v2 = versions["v1"], versions["v2"]
    client.set_registered_model_alias(NAME, "champion", v1)
    first = _deploy_through_the_dag()
    assert task_results(first)["deploy"]["state"] == "success"
    url = f"{RayHook().endpoints['serve_url']}/{NAME}"
    info = requests.get(url, timeout=10).json()
    assert info["model_version"] == v1 and "warm" in info["routes"]

    # champion moved to v2 by hand (no previous_champion, unlike promote's moves): the
    # rollback must restore what serves, v1, not whatever previous_champion names
    client.set_registered_model_alias(NAME, "champion", v2)

    x, y = read_xy(prepared["paths"]["test"], prepared["feature_names"])
    codes: list[int] = []
    stop = threading.Event()

    def client_calling() -> None:  # live traffic: the canary's only probes in this run
        i = 0
        while not stop.is_set():
            try:
                codes.append(
                    requests.post(
                        url, json={"instances": [x[i % len(x)].tolist()]}, timeout=30
                    ).status_code
                )
            except requests.RequestException:
                codes.append(-1)
            i += 1
            time.sleep(0.02)

    caller = threading.Thread(target=client_calling, daemon=True)
    caller.start()
    when = datetime.now(UTC).replace(microsecond=0)
    try:
        share = _kill_during_the_canary(when, url, v2)
        # killed mid-step: the split is left as it was, and both versions answer
        time.sleep(2)
        left = requests.get(url, timeout=10).json()
        assert left["model_version"] == v1 and left["canary"]["candidate"] == v2, left
        assert sorted(ServeHook().served_versions(NAME)) == sorted([v1, v2])
        killed_codes = len(codes)
        second = _deploy_through_the_dag(when)  # the retry
    finally:
        stop.set()
        caller.join(timeout=60)
    deploy = task_results(second)["deploy"]
    assert str(second.state) == "failed" and deploy["state"] == "failed"
    # the registry: champion is v1 again and v2 carries the rollback's marker
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == v1
    tags = client.get_model_version(NAME, v2).tags
    assert tags["slaflow.rolled_back_by"].startswith("ml_lifecycle/")
    assert tags["slaflow.gate.decision"] == "rolled_back"
    intent = json.loads(client.get_registered_model(NAME).tags["slaflow.serving.intent"])
    assert intent["state"] == "failed" and intent["version"] == v1  # ml_reconcile: in step
    assert "slaflow.serving" not in tags  # never recorded as serving
    # the endpoint: v1 alone, no canary; no request failed during the try and the rollback
    info = requests.get(url, timeout=10).json()
    from tests.reliability import record

    champion = str(client.get_model_version_by_alias(NAME, "champion").version)
    record(
        "a wrong version (an untrained model) promoted and deployed through the DAG's canary; "
        f"the deploy task's first try killed (SIGKILL) at the canary's {share:.0%} step",
        requests_sent=len(codes),
        requests_failed=sum(c != 200 for c in codes),
        requests_before_the_retry=killed_codes,
        champion_equals_served=champion == info["model_version"],
        versions=len(client.search_model_versions(f"name = '{NAME}'")),
    )
    assert info["model_version"] == v1 and info["canary"]["candidate"] is None

    assert ServeHook().served_versions(NAME) == [v1]  # the canary's application is gone
    assert len(codes) > 50 and set(codes) == {200}, sorted(set(codes))
    answers = requests.post(url, json={"instances": x[:200].tolist()}, timeout=30).json()
    assert np.mean(np.array(answers["predictions"]) == y[:200]) > 0.8  # v1's right answers
    served = json.loads(client.get_model_version(NAME, v1).tags["slaflow.serving"])
    assert served["plan"]["variant"] == "full" and served["canary"] == []
