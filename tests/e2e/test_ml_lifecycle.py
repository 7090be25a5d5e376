"""ml_lifecycle end to end through dag.test() on the real stack (Ray, Spark, MLflow, Serve)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.e2e

MODEL = "e2e-digits"
SMALL = {"model_name": MODEL, "max_epochs": 12, "hidden_units": [32], "target_accuracy": 0.85,
         "learning_rate": 0.01}
REQUEST = json.loads((Path(__file__).resolve().parents[2] / "examples" /
                      "digit_request.json").read_text())  # the digits 0 and 1


@pytest.fixture(scope="module")
def lifecycle(ray_cluster: Any) -> Any:
    from slaflow import cli

    cli.airflow_db_ready()

    def run(conf: dict[str, Any]) -> dict[str, Any]:
        # A fresh parse per run: a DAG object reused for a second dag.test() in the same
        # process keeps the first run's conf as its params (checked: a run without deadline_s
        # after one with deadline_s 5 got 5). Workers parse the DAG per task; so do we.
        dag = cli.load_dag()
        dag_run = dag.test(run_conf=conf)
        return {"state": str(dag_run.state), "tasks": cli.task_results(dag_run)}

    return run


@pytest.fixture(scope="module")
def registry(lifecycle: Any) -> Any:
    from operators.hooks import MlflowHook

    return MlflowHook().client


def _alias(client: Any, alias: str) -> str:
    return str(client.get_model_version_by_alias(MODEL, alias).version)


def test_first_run_trains_registers_promotes_and_serves(lifecycle: Any, registry: Any) -> None:
    out = lifecycle(SMALL)
    states = {t: v["state"] for t, v in out["tasks"].items()}
    assert out["state"] == "success", states
    assert set(states.values()) == {"success"}
    summary = out["tasks"]["verify"]["value"]
    assert summary["model_version"] == "1" and summary["alias"] == "champion"
    assert summary["deadline_met"] is True and summary["outcome"] == "target_met"
    assert summary["worker_seconds"] > 0
    assert out["tasks"]["feasibility"]["value"]["verdict"]["feasible"] is True
    assert summary["accuracy"] >= 0.85 and summary["verify_accuracy"] > 0.8
    assert summary["bad_request_status"] == 400
    assert summary["verify_p50_ms"] > 0 and summary["verify_p99_ms"] >= summary["verify_p50_ms"]
    assert _alias(registry, "champion") == "1"
    version = registry.get_model_version(MODEL, "1")
    assert json.loads(version.tags["slaflow.contract"])["max_epochs"] == 12
    assert version.tags["slaflow.gate.decision"] == "promoted"
    assert version.tags["slaflow.airflow_run_id"].startswith("manual__")
    run = registry.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["accuracy"])
    answer = requests.post(summary["endpoint_url"], json=REQUEST, timeout=10).json()
    assert answer["predictions"] == [0, 1] and answer["model_version"] == "1"


def test_cli_run_that_fails_the_gate_leaves_champion_serving(lifecycle: Any, registry: Any,
                                                             tmp_path: Path) -> None:
    """Through the demo's own CLI: its last stdout line is the JSON summary."""
    conf = tmp_path / "contract.json"
    conf.write_text(json.dumps({**SMALL, "min_gain_over_champion": 0.5}))
    proc = subprocess.run([sys.executable, "-m", "slaflow.cli", "demo", "--conf", str(conf)],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("contract", "accuracy", "deadline_met", "training_seconds", "mlflow_run_id",
                "model_name", "model_version", "alias", "endpoint_url", "verify_p50_ms",
                "verify_p99_ms"):
        assert key in summary, key
    assert summary["model_version"] == "2" and summary["alias"] == "challenger"
    assert summary["promoted"] is False and summary["served_version"] == "1"
    assert _alias(registry, "champion") == "1" and _alias(registry, "challenger") == "2"
    report = json.loads(registry.get_model_version(MODEL, "2").tags["slaflow.gate.report"])
    assert [c["passed"] for c in report["checks"]] == [True, False]
    assert registry.get_model_version(MODEL, "2").tags["slaflow.gate.decision"] == "not_promoted"
    answer = requests.post(summary["endpoint_url"], json=REQUEST, timeout=10).json()
    assert answer["model_version"] == "1"


def test_bad_contract_never_starts_a_run_and_harms_nothing(lifecycle: Any,
                                                           registry: Any) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="deadline_s"):
        lifecycle({**SMALL, "deadline_s": -1})
    assert _alias(registry, "champion") == "1"
    assert len(registry.search_model_versions(f"name = '{MODEL}'")) == 2


def test_infeasible_contract_fails_before_training(lifecycle: Any, registry: Any) -> None:
    """A 5 s deadline cannot hold even the start-up: refused before any training compute."""
    out = lifecycle({**SMALL, "deadline_s": 5})
    states = {t: v["state"] for t, v in out["tasks"].items()}
    assert out["state"] == "failed", states
    assert "failed" in states["feasibility"]
    assert "success" not in states.get("train", "none")
    assert out["tasks"].get("train", {}).get("value") is None
    assert _alias(registry, "champion") == "1"
    assert len(registry.search_model_versions(f"name = '{MODEL}'")) == 2


def test_federated_contract_trains_clients_and_serves_the_global_model(
        lifecycle: Any, registry: Any) -> None:
    """training_mode=federated: FedAvg over Ray actor clients, then the same evaluate /
    register / promote / deploy path as any other model."""
    name = "e2e-federated"
    out = lifecycle({**SMALL, "model_name": name, "training_mode": "federated",
                     "fl_clients": 4, "fl_clients_per_round": 2, "fl_rounds": 15,
                     "fl_strategy": "linear", "fl_max_local_epochs": 16,
                     "batch_size": 32})
    states = {t: v["state"] for t, v in out["tasks"].items()}
    assert out["state"] == "success", states
    train = out["tasks"]["train"]["value"]
    fl = train["federated"]
    assert train["outcome"] == "target_met" and 1 <= fl["rounds"] <= 15
    assert fl["participations"] == 2 * fl["rounds"] and fl["clients"] == 4
    assert out["tasks"]["feasibility"]["value"]["verdict"]["status"] == "not_assessed"
    summary = out["tasks"]["verify"]["value"]
    assert summary["model_version"] == "1" and summary["alias"] == "champion"
    assert registry.get_run(train["mlflow_run_id"]).data.tags[
        "slaflow.training_mode"] == "federated"
    answer = requests.post(summary["endpoint_url"], json=REQUEST, timeout=10).json()
    assert len(answer["predictions"]) == 2 and answer["model_version"] == "1"
    assert str(registry.get_model_version_by_alias(name, "champion").version) == "1"
