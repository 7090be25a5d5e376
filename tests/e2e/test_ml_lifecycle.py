"""ml_lifecycle end to end through dag.test() on the real stack (Ray, Spark, MLflow, Serve).

Each test has its own model name and makes its own preconditions (a champion served is set up
from the session's trained model, without a DAG run), so the tests pass in any order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.reliability import record

pytestmark = pytest.mark.e2e

MODEL = "e2e-digits"
# Traffic and an SLO these 2-core runs can plan for: under the suite's load a replica's
# profiled capacity fell to ~50 req/s and its p99 to 60-110 ms, and the default peak (60 req/s
# at p99 100 ms) then needs more than serving_max_replicas, which the planner rightly refuses
# (unit tests cover that).
SMALL = {
    "model_name": MODEL,
    "max_epochs": 12,
    "hidden_units": [32],
    "target_accuracy": 0.85,
    "learning_rate": 0.01,
    "stop_margin": 0.01,
    "expected_rps": 5.0,
    "peak_rps": 20.0,
    "latency_slo_ms": 300.0,
}
#: The Spark-deadline runs are about the prepare stage; the rest of the lifecycle is
#: covered by the other tests, so those runs mark it done instead of running it.
PREPARE = ("plan", "prepare")
REQUEST = json.loads(
    (Path(__file__).resolve().parents[2] / "examples" / "digit_request.json").read_text()
)  # the digits 0 and 1


def _alias(client: Any, alias: str, model: str = MODEL) -> str:
    return str(client.get_model_version_by_alias(model, alias).version)


def test_first_run_trains_registers_promotes_and_serves(lifecycle: Any, registry: Any) -> None:
    out = lifecycle(SMALL)
    states = {t: v["state"] for t, v in out["tasks"].items()}
    assert out["state"] == "success", states
    assert states.pop("review") == "skipped"  # review_policy 'never': the gate decides alone
    assert set(states.values()) == {"success"}
    summary = out["tasks"]["verify"]["value"]
    assert summary["model_version"] == "1" and summary["alias"] == "champion"
    assert summary["deadline_met"] is True and summary["outcome"] == "target_met"
    assert summary["worker_seconds"] > 0
    assert out["tasks"]["feasibility"]["value"]["verdict"]["feasible"] is True
    assert summary["accuracy"] >= 0.85 and summary["verify_accuracy"] > 0.8
    assert summary["bad_request_status"] == 422  # a row of 2 values: the OpenAPI row has 64
    assert summary["verify_p50_ms"] > 0 and summary["verify_p99_ms"] >= summary["verify_p50_ms"]
    assert _alias(registry, "champion") == "1"
    version = registry.get_model_version(MODEL, "1")
    assert json.loads(version.tags["slaflow.contract"])["max_epochs"] == 12
    assert version.tags["slaflow.gate.decision"] == "promoted"
    assert len(version.tags["slaflow.artifact_sha256"]) == 64  # the replicas checked it
    assert version.tags["slaflow.airflow_run_id"].startswith("manual__")
    # Registry review: description, gate with its uncertainty, serving plan, link to Airflow.
    assert "test accuracy" in version.description and "promoted to champion" in version.description
    report = json.loads(version.tags["slaflow.gate.report"])
    lo, hi = report["test_accuracy_ci95"]
    assert lo < summary["accuracy"] < hi and report["review"]["required"] is False
    assert "PASS target_accuracy" in version.tags["slaflow.gate.reasons"]
    serving = json.loads(version.tags["slaflow.serving"])
    assert serving["endpoint"] == summary["endpoint_url"]
    intent = json.loads(registry.get_registered_model(MODEL).tags["slaflow.serving.intent"])
    assert intent["state"] == "serving" and intent["version"] == "1"  # what ml_reconcile reads
    # Serving under the contract: measured profile -> planned placement -> routed endpoint
    prof = out["tasks"]["profile_serving"]["value"]["profile"]
    assert {v["name"] for v in prof["variants"]} == {"full", "int8"}
    assert all(p["p50_ms"] > 0 and p["capacity_rps"] > 0 for p in prof["points"])
    assert version.tags["slaflow.serving.profile"].endswith("serving/profile.json")
    placement = out["tasks"]["deploy"]["value"]["placement"]
    assert placement["predicted_tail_ms"] <= 300.0 and placement["tier"] == "cpu_on_demand"
    assert serving["plan"]["variant"] == placement["variant"]
    tiers = {t["route"]: t for t in serving["tiers"]}
    assert set(tiers) == {"warm", "batch", "elastic"}
    assert tiers["warm"]["autoscaler"]["max_replicas"] == placement["max_replicas"]
    # idle tiers hold nothing: batch and elastic start at zero (scale_to_zero is allowed)
    assert tiers["batch"]["initial_replicas"] == tiers["elastic"]["initial_replicas"] == 0
    assert json.loads(version.tags["slaflow.verify"])["passed"] is True
    assert version.tags["slaflow.airflow_run_url"].endswith(
        "/dags/ml_lifecycle/runs/"
        + version.tags["slaflow.airflow_run_id"].replace("+", "%2B").replace(":", "%3A")
    )
    assert int(version.tags["slaflow.model_params"]) == 64 * 32 + 32 + 32 * 10 + 10
    artifacts = {a.path for a in registry.list_artifacts(summary["mlflow_run_id"], "serving")}
    assert "serving/verify_latency.png" in artifacts
    run = registry.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["accuracy"])
    answer = requests.post(summary["endpoint_url"], json=REQUEST, timeout=10).json()
    assert answer["predictions"] == [0, 1] and answer["model_version"] == "1"
    assert answer["route"] == "warm"
    _undeploy(MODEL)  # an idle model still costs the cluster CPU (autoscaler and replica)


def _undeploy(name: str) -> None:
    """Free the CPUs a test's model holds (later tests train on the cluster)."""
    from operators.hooks import ServeHook

    ServeHook().undeploy(name)


@pytest.fixture
def served_champion(trained: dict[str, Any], registry: Any, tracking_uri: str) -> Any:
    """A model with a champion already served (the session's trained model as v1, fixed
    layout), made without a DAG run; a test gets its own model name."""
    from mlflow_config import registry as reg
    from operators.hooks import ServeHook
    from policies import (
        PriceTable,
        RunContract,
        decide_promotion,
        fixed_plan,
        serving_layout,
        version_app,
    )

    made: list[str] = []

    def make(name: str) -> str:
        run = trained["run_id"]
        version, _ = reg.register_version(
            registry,
            name,
            trained["result"]["model_uri"],
            run,
            {
                reg.TAG_TEST_ACCURACY: repr(0.9),
                reg.TAG_CONTRACT: json.dumps(
                    RunContract.from_dict({**SMALL, "model_name": name}).to_dict()
                ),
            },
            "v1 of a test: the session's trained model",
        )
        reg.apply_promotion(
            registry, name, str(version.version), decide_promotion(0.9, 0.85, 0.0, None)
        )
        contract = RunContract.from_dict({**SMALL, "model_name": name})
        tiers = serving_layout(fixed_plan(contract), contract, PriceTable.default())
        hook = ServeHook()
        hook.deploy_version(
            name,
            tracking_uri,
            {
                "version": str(version.version),
                "model_uri": f"models:/{name}/{version.version}",
                "tiers": [t.to_dict() for t in tiers],
            },
        )
        hook.wait_running(version_app(name, str(version.version)))
        hook.route(
            name,
            {
                "primary": str(version.version),
                "versions": {str(version.version): {"routes": ["warm"]}},
            },
        )
        hook.wait_routing(name, str(version.version), None)
        made.append(name)
        return str(version.version)

    yield make
    for name in made:
        _undeploy(name)


def test_new_champion_takes_traffic_through_a_canary(lifecycle: Any, registry: Any) -> None:
    """A weak v1 serves; a better v2 is promoted, deployed beside it, takes 10% then 50% of
    the traffic with the canary checks passing, then all of it; v1 is previous_champion."""
    name = "e2e-canary"
    # a weaker v1 of the same architecture (one epoch at 0.4x the learning rate: accuracy
    # 0.74-0.77 over three seeds; at 0.2x it was 0.44-0.51, too weak: the canary then rightly
    # rolled v2 back as answering too differently), far enough below v2 to lose, close enough
    # that their answers mostly agree; batch size and architecture as SMALL, so its calibration
    # and profile keys match
    first = lifecycle(
        {
            **SMALL,
            "model_name": name,
            "max_epochs": 1,
            "learning_rate": 0.004,
            "target_accuracy": 0.05,
            "stop_margin": 0.0,
            # served as the full model: the int8 variant of a one-epoch network, within the
            # slack on accuracy, still answered 15 of 27 probes unlike v2 once (CI, 12-07),
            # and the canary rightly rolled v2 back; this test is about a canary that passes
            "serving_accuracy_slack": 0.0,
        }
    )
    assert first["state"] == "success"
    assert first["tasks"]["deploy"]["value"]["canary"] == []  # nothing served before
    second = lifecycle({**SMALL, "model_name": name, "min_gain_over_champion": 0.01})
    states = {t: v["state"] for t, v in second["tasks"].items()}
    assert second["state"] == "success", states
    # same architecture, weight shapes, replica shapes and node type: the latency profile
    # of v1 is reused; each version's accuracy is its own
    profile = second["tasks"]["profile_serving"]["value"]
    assert profile["reused"] is True
    assert {v["name"]: v["accuracy"] for v in profile["profile"]["variants"]}[
        "full"
    ] == pytest.approx(second["tasks"]["evaluate"]["value"]["test_accuracy"])
    deploy = second["tasks"]["deploy"]["value"]
    assert [(c["share"], c["action"]) for c in deploy["canary"]] == [
        (0.1, "advance"),
        (0.5, "advance"),
    ]
    assert deploy["model_version"] == "2"
    assert str(registry.get_model_version_by_alias(name, "champion").version) == "2"
    assert str(registry.get_model_version_by_alias(name, "previous_champion").version) == "1"
    endpoint = second["tasks"]["verify"]["value"]["endpoint_url"]
    info = requests.get(endpoint, timeout=10).json()
    assert info["model_version"] == "2" and info["canary"]["candidate"] is None
    served = json.loads(registry.get_model_version(name, "2").tags["slaflow.serving"])
    assert [c["action"] for c in served["canary"]] == ["advance", "advance"]
    from operators.hooks import ServeHook

    assert ServeHook().served_versions(name) == ["2"]  # v1's application is gone
    _undeploy(name)


def test_cli_run_that_fails_the_gate_leaves_champion_serving(
    lifecycle: Any, registry: Any, served_champion: Any, tmp_path: Path
) -> None:
    """Through the demo's own CLI: its last stdout line is the JSON summary."""
    name = "e2e-gate"
    champion = served_champion(name)
    conf = tmp_path / "contract.json"
    conf.write_text(json.dumps({**SMALL, "model_name": name, "min_gain_over_champion": 0.5}))
    proc = subprocess.run(
        [sys.executable, "-m", "slaflow.cli", "demo", "--conf", str(conf)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in (
        "contract",
        "accuracy",
        "deadline_met",
        "training_seconds",
        "mlflow_run_id",
        "model_name",
        "model_version",
        "alias",
        "endpoint_url",
        "verify_p50_ms",
        "verify_p99_ms",
        "stage_seconds",
        "log",
    ):
        assert key in summary, key
    assert Path(summary["log"]).is_file() and "[progress]" in Path(summary["log"]).read_text()
    new = summary["model_version"]
    assert int(new) == int(champion) + 1 and summary["alias"] == "challenger"
    assert summary["promoted"] is False and summary["served_version"] == champion
    assert _alias(registry, "champion", name) == champion
    assert _alias(registry, "challenger", name) == new
    report = json.loads(registry.get_model_version(name, new).tags["slaflow.gate.report"])
    assert {c["name"]: c["passed"] for c in report["checks"]} == {
        "target_accuracy": True,
        "gain_over_champion": False,
        "test_set_size": True,
    }
    assert registry.get_model_version(name, new).tags["slaflow.gate.decision"] == "not_promoted"
    answer = requests.post(summary["endpoint_url"], json=REQUEST, timeout=10).json()
    assert answer["model_version"] == champion


def test_bad_contract_never_starts_a_run_and_harms_nothing(lifecycle: Any, registry: Any) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    name = "e2e-bad-contract"
    with pytest.raises(ParamValidationError, match="deadline_s"):
        lifecycle({**SMALL, "model_name": name, "deadline_s": -1})
    assert registry.search_model_versions(f"name = '{name}'") == []


def test_data_outside_the_data_roots_fails_the_plan_naming_data_source(
    lifecycle: Any, registry: Any, slaflow_home: Path, tmp_path: Path, capfd: Any
) -> None:
    """A link under SLAFLOW_HOME (a data root) to a file outside every root: the plan task
    judges where the link leads, refuses it naming the field, and nothing later runs."""
    secret = tmp_path / "secret.csv"
    secret.write_text("a,label\n1,0\n")
    link = slaflow_home / "incoming" / "looks-fine.csv"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(secret)
    name = "e2e-data-roots"
    out = lifecycle({**SMALL, "model_name": name, "data_source": str(link)}, only=PREPARE)
    assert out["state"] == "failed"
    states = {t: v["state"] for t, v in out["tasks"].items()}
    assert "failed" in states["plan"] and "upstream_failed" in states["prepare"], states
    text = capfd.readouterr()
    logged = text.out + text.err
    assert "contract field 'data_source'" in logged and str(secret) in logged
    assert "SLAFLOW_DATA_ROOTS" in logged
    assert registry.search_model_versions(f"name = '{name}'") == []


def test_infeasible_contract_fails_before_training(lifecycle: Any, registry: Any) -> None:
    """A 5 s deadline cannot hold even the start-up: refused before any training compute."""
    name = "e2e-infeasible"
    out = lifecycle({**SMALL, "model_name": name, "deadline_s": 5})
    states = {t: v["state"] for t, v in out["tasks"].items()}
    assert out["state"] == "failed", states
    assert "failed" in states["feasibility"]
    assert "success" not in states.get("train", "none")
    assert out["tasks"].get("train", {}).get("value") is None
    assert registry.search_model_versions(f"name = '{name}'") == []


def test_federated_contract_trains_clients_and_serves_the_global_model(
    lifecycle: Any, registry: Any
) -> None:
    """training_mode=federated: FedAvg over Ray actor clients, then the same evaluate /
    register / promote / deploy path as any other model."""
    name = "e2e-federated"
    out = lifecycle(
        {
            **SMALL,
            "model_name": name,
            "training_mode": "federated",
            "fl_clients": 4,
            "fl_clients_per_round": 2,
            "fl_rounds": 15,
            "fl_strategy": "linear",
            "fl_max_local_epochs": 16,
            "batch_size": 32,
        }
    )
    states = {t: v["state"] for t, v in out["tasks"].items()}
    assert out["state"] == "success", states
    train = out["tasks"]["train"]["value"]
    fl = train["federated"]
    assert train["outcome"] == "target_met" and 1 <= fl["rounds"] <= 15
    assert fl["participations"] == 2 * fl["rounds"] and fl["clients"] == 4
    assert out["tasks"]["feasibility"]["value"]["verdict"]["status"] == "not_assessed"
    summary = out["tasks"]["verify"]["value"]
    assert summary["model_version"] == "1" and summary["alias"] == "champion"
    assert (
        registry.get_run(train["mlflow_run_id"]).data.tags["slaflow.training_mode"] == "federated"
    )
    answer = requests.post(summary["endpoint_url"], json=REQUEST, timeout=10).json()
    assert len(answer["predictions"]) == 2 and answer["model_version"] == "1"
    assert str(registry.get_model_version_by_alias(name, "champion").version) == "1"
    _undeploy(name)


@pytest.fixture(scope="module")
def spark_standalone(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from slaflow.spark_standalone import SparkStandalone

    with SparkStandalone(
        tmp_path_factory.mktemp("e2e-spark"),
        cores=2,
        memory="2g",
        port=7378,
        ui_port=8392,
        worker_ui_port=8393,
    ) as cluster:
        yield cluster


def test_prepare_on_a_standalone_master_under_a_deadline(
    lifecycle: Any, registry: Any, spark_standalone: Any
) -> None:
    """spark_master + prepare_deadline_s from the contract: the first run profiles the prepare
    job on the standalone master, the next runs under the dynaSpark controller, and a deadline
    below the profiled minimum fails in prepare before any training (each run is plan and
    prepare only: the stages after them are what the other tests cover)."""
    name = "e2e-spark-deadline"
    conf = {
        **SMALL,
        "model_name": name,
        "max_epochs": 4,
        "target_accuracy": 0.5,
        "spark_master": spark_standalone.master_url,
        "prepare_max_cores": 2,
    }
    first = lifecycle({**conf, "prepare_deadline_s": 600}, only=PREPARE)
    states = {t: v["state"] for t, v in first["tasks"].items()}
    assert first["state"] == "success", states
    report = first["tasks"]["prepare"]["value"]["spark_deadline"]
    assert report["mode"] == "profiling" and report["met"] and report["resizable"]
    assert report["master"] == spark_standalone.master_url and report["profiled_stages"] >= 5

    deadline = round(2.5 * report["elapsed_s"], 1)
    second = lifecycle({**conf, "prepare_deadline_s": deadline}, only=PREPARE)
    states = {t: v["state"] for t, v in second["tasks"].items()}
    assert second["state"] == "success", states
    ctl = second["tasks"]["prepare"]["value"]["spark_deadline"]
    assert ctl["mode"] == "controlled" and ctl["feasibility"]["feasible"], ctl
    assert ctl["met"] and ctl["elapsed_s"] <= deadline and ctl["stage_plans"], ctl
    assert ctl["core_seconds"] < 2 * deadline

    versions = len(registry.search_model_versions(f"name = '{name}'"))
    third = lifecycle({**conf, "prepare_deadline_s": 0.2}, only=PREPARE)
    states = {t: v["state"] for t, v in third["tasks"].items()}
    assert third["state"] == "failed" and "failed" in states["prepare"], states
    assert "success" not in states.get("train", "none")
    assert len(registry.search_model_versions(f"name = '{name}'")) == versions
    _undeploy(name)


def test_spark_mllib_contract_trains_on_spark_and_serves(lifecycle: Any, registry: Any) -> None:
    """training_mode=spark_mllib: MLlib on the Spark master, under the Spark deadline loop,
    exported as the same SavedModel, then evaluated, registered and served like any model."""
    name = "e2e-mllib"
    out = lifecycle({**SMALL, "model_name": name, "training_mode": "spark_mllib", "max_epochs": 60})
    states = {t: v["state"] for t, v in out["tasks"].items()}
    assert out["state"] == "success", states
    train = out["tasks"]["train"]["value"]
    assert train["outcome"] == "target_met" and train["best_val_accuracy"] >= 0.85
    assert train["spark_deadline"]["mode"] == "profiling" and train["deadline_met"]
    assert out["tasks"]["evaluate"]["value"]["test_accuracy"] >= 0.85
    summary = out["tasks"]["verify"]["value"]
    assert summary["model_version"] == "1" and summary["alias"] == "champion"
    answer = requests.post(summary["endpoint_url"], json=REQUEST, timeout=10).json()
    assert answer["predictions"] == [0, 1] and answer["model_version"] == "1", answer
    _undeploy(name)


def test_rollback_moves_champion_and_serving_back_and_refuses_when_nothing_to_undo(
    lifecycle: Any,
    registry: Any,
    served_champion: Any,
    trained: dict[str, Any],
    prepared: dict[str, Any],
    tracking_uri: str,
) -> None:
    """A served v1; a v2 (an untrained network) promoted by hand and served; ml_rollback (one
    CLI command) puts v1 back in the registry and on the endpoint. A second rollback has
    nothing to go back to."""
    from mlflow_config import registry as reg
    from operators.hooks import ServeHook
    from policies import ReviewOutcome, apply_review, decide_promotion, version_app
    from tests.conftest import log_untrained_model, tier

    name = "e2e-rollback"
    v1 = served_champion(name)
    exp = reg.get_or_create_experiment(registry, "slaflow/tests", None)
    run, _ = reg.find_or_create_run(registry, exp, "e2e-rollback-v2", "e2e-rollback-v2", {})
    version, _ = reg.register_version(
        registry,
        name,
        log_untrained_model(run, prepared),
        run,
        {reg.TAG_TEST_ACCURACY: repr(0.99)},
        "v2 of a test",
    )
    v2 = str(version.version)
    decision = apply_review(
        decide_promotion(0.99, 0.85, 0.0, reg.get_champion(registry, name)),
        ReviewOutcome(True, "e2e-test"),
    )
    reg.apply_promotion(registry, name, v2, decision)
    assert _alias(registry, "champion", name) == v2
    assert _alias(registry, "previous_champion", name) == v1
    hook = ServeHook()
    hook.deploy_version(
        name,
        tracking_uri,
        {
            "version": v2,
            "model_uri": f"models:/{name}/{v2}",
            "tiers": [tier(batch=1, ongoing=8, queued=8)],
        },
    )
    hook.wait_running(version_app(name, v2))
    hook.route(name, {"primary": v2, "versions": {v2: {"routes": ["warm"]}}})
    hook.wait_routing(name, v2, None)

    cmd = [sys.executable, "-m", "slaflow.cli", "rollback", "--model", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["champion"] == v1 and out["demoted"] == v2 and out["serving"] == v1
    assert _alias(registry, "champion", name) == v1
    assert (
        registry.get_model_version(name, v2)
        .tags["slaflow.rolled_back_by"]
        .startswith("ml_rollback/")
    )
    answer = requests.post(hook.url(name), json=REQUEST, timeout=10).json()
    assert answer["model_version"] == v1 and answer["predictions"] == [0, 1]
    assert hook.served_versions(name) == [v1]

    again = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert again.returncode == 2
    assert "has no 'previous_champion' alias" in again.stdout
    assert _alias(registry, "champion", name) == v1


def test_undeploy_takes_the_model_off_the_endpoint_and_leaves_the_registry(
    lifecycle: Any, registry: Any, served_champion: Any
) -> None:
    """`make undeploy` (the ml_undeploy DAG): the endpoint answers 404, the model's CPUs are
    free again, and champion still names the version."""
    from operators.hooks import ServeHook

    name = "e2e-undeploy"
    v1 = served_champion(name)
    hook = ServeHook()
    held = hook.footprint().by_model()[name]
    assert held > 0
    proc = subprocess.run(
        [sys.executable, "-m", "slaflow.cli", "undeploy", "--model", name],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["freed_cpus"] == pytest.approx(held) and name in out["deleted"]
    assert name not in hook.footprint().by_model()
    assert requests.get(hook.url(name), timeout=10).status_code == 404
    assert _alias(registry, "champion", name) == v1
    # on purpose: ml_reconcile must not serve it again
    intent = json.loads(registry.get_registered_model(name).tags["slaflow.serving.intent"])
    assert intent["state"] == "off" and intent["by"].startswith("ml_undeploy/")


@pytest.mark.chaos
def test_reconcile_serves_the_champion_again_after_serving_is_lost_or_drifts(
    lifecycle: Any,
    registry: Any,
    served_champion: Any,
    prepared: dict[str, Any],
) -> None:
    """ml_reconcile (dag.test, one model): in step it does nothing; with the model's Serve
    applications gone (what a Ray head restart leaves) it serves the champion again; after a
    promote whose deploy failed it serves the new champion; a model taken off on purpose
    stays off. Each repair is recorded on the version."""
    from mlflow_config import registry as reg
    from operators.hooks import ServeHook
    from policies import RunContract, decide_promotion
    from slaflow import cli
    from tests.conftest import log_untrained_model

    name = "e2e-reconcile"
    v1 = served_champion(name)
    hook = ServeHook()

    def reconcile() -> list[dict[str, Any]]:
        run = cli.load_dag("ml_reconcile").test(run_conf={"model_name": name})
        tasks = cli.task_results(run)
        assert str(run.state) == "success", {t: v["state"] for t, v in tasks.items()}
        return list(tasks["check"]["value"])

    assert reconcile() == []  # in step
    hook.undeploy(name)  # the applications are gone; the registry says nothing about it
    assert [r["promotion"]["model_version"] for r in reconcile()] == [v1]
    record(
        "the model's Serve applications deleted (what a Ray head restart leaves), then "
        "ml_reconcile",
        champion_equals_served=hook.served_version(name) == _alias(registry, "champion", name),
    )
    assert hook.served_version(name) == v1
    done = json.loads(registry.get_model_version(name, v1).tags["slaflow.reconciled"])
    assert "nothing answers at the endpoint" in done["reason"]
    assert done["by"].startswith("ml_reconcile/")
    assert reg.serving_intent(registry, name).state == "serving"

    # a run promoted v2 and its deploy failed: champion moved, v1 still serves
    exp = reg.get_or_create_experiment(registry, "slaflow/tests", None)
    run, _ = reg.find_or_create_run(registry, exp, "e2e-reconcile-v2", "e2e-reconcile-v2", {})
    contract = RunContract.from_dict({**SMALL, "model_name": name}).to_dict()
    version, _ = reg.register_version(
        registry,
        name,
        log_untrained_model(run, prepared),
        run,
        {reg.TAG_TEST_ACCURACY: repr(0.99), reg.TAG_CONTRACT: json.dumps(contract)},
        "v2 of a test",
    )
    v2 = str(version.version)
    reg.apply_promotion(registry, name, v2, decide_promotion(0.99, 0.85, 0.0, None))
    reg.set_serving_intent(registry, name, "failed", v2, "ml_lifecycle/a-failed-deploy")
    assert [r["promotion"]["model_version"] for r in reconcile()] == [v2]
    record(
        "a promote whose deploy failed (champion moved, the old version serving), then "
        "ml_reconcile",
        champion_equals_served=hook.served_version(name) == _alias(registry, "champion", name),
        versions=len(registry.search_model_versions(f"name = '{name}'")),
    )
    assert hook.served_version(name) == v2 and hook.served_versions(name) == [v2]
    done = json.loads(registry.get_model_version(name, v2).tags["slaflow.reconciled"])
    assert f"v{v1} serves but champion is v{v2}" in done["reason"] and "failed" in done["reason"]

    # taken off on purpose (what ml_undeploy records): it stays off
    reg.set_serving_intent(registry, name, "off", v2, "ml_undeploy/a-person")
    hook.undeploy(name)
    assert reconcile() == [] and hook.served_version(name) is None
