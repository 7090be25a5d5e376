"""Federated training on a real Ray cluster (client actors) through the Job API, MLflow on
SQLite: rounds under hyperFL's control, a client killed mid-round, a resubmitted job."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import pytest

from tests.conftest import job_runner, train_spec
from tests.reliability import record

pytestmark = pytest.mark.integration


def _fl_spec(
    prepared: dict[str, Any], tracking_uri: str, run_id: str, run_name: str, **overrides: Any
) -> dict[str, Any]:
    spec = train_spec(
        prepared,
        tracking_uri,
        run_id,
        run_name,
        deadline_s=300.0,
        stop_accuracy=0.85,
        learning_rate=0.01,
        batch_size=32,
    )
    spec.update(
        fl_clients=4,
        fl_clients_per_round=2,
        fl_rounds=12,
        fl_network_budget=0,
        fl_strategy="linear",
        fl_local_epochs=1,
        fl_max_local_epochs=16,
        fl_dirichlet_alpha=0.5,
        fl_round_timeout_s=60.0,
    )
    spec.update(overrides)
    return spec


def _run(name: str) -> str:
    from mlflow_config import registry as reg
    from operators.hooks import MlflowHook

    client = MlflowHook().client
    exp = reg.get_or_create_experiment(client, "slaflow/tests-fl", MlflowHook().artifact_location)
    run_id, _ = reg.find_or_create_run(client, exp, name, name, {})
    return run_id


def _runner(logs: list[str]) -> Any:

    return job_runner(logs.append)


def test_rounds_follow_the_policy_reach_the_target_and_log_to_mlflow(
    ray_cluster: Any, prepared: dict[str, Any], tracking_uri: str
) -> None:
    from mlflow.tracking import MlflowClient

    run_id = _run("fl-linear")
    logs: list[str] = []
    result = _runner(logs).run(
        base_id="slaflow-fl-linear",
        module="ray_jobs.federated",
        spec=_fl_spec(prepared, tracking_uri, run_id, "fl-linear"),
        timeout_s=600,
    )
    fl = result["federated"]
    assert result["stop_reason"] == "target_met" and result["outcome"] == "target_met"
    assert result["best_val_accuracy"] >= 0.85 and fl["rounds"] <= 12
    # Every round: 2 of the 4 clients, E chosen by the policy within its bounds; the first
    # round uses fl_local_epochs.
    assert fl["local_epochs"][0] == 1 and all(1 <= e <= 16 for e in fl["local_epochs"])
    assert fl["participations"] == 2 * fl["rounds"]
    assert fl["client_epochs"] == 2 * sum(fl["local_epochs"])
    assert sum("[slaflow] round " in line for line in logs) == fl["rounds"]

    client = MlflowClient(tracking_uri)
    chosen = [
        int(m.value)
        for m in sorted(client.get_metric_history(run_id, "local_epochs"), key=lambda m: m.step)
    ]
    assert chosen == fl["local_epochs"]
    acc = client.get_metric_history(run_id, "val_accuracy")
    assert max(m.value for m in acc) == pytest.approx(result["best_val_accuracy"])
    arts = {a.path for a in client.list_artifacts(run_id, "federated")}
    assert {"federated/rounds.png", "federated/rounds.json", "federated/shards.json"} <= arts
    shards = json.loads(open(client.download_artifacts(run_id, "federated/shards.json")).read())
    assert sum(shards["rows"].values()) == prepared["split_counts"]["train"]
    assert result["outcome"] == "target_met"  # the train task records it on the run
    assert client.get_run(run_id).data.metrics["best_val_accuracy"] == pytest.approx(
        result["best_val_accuracy"]
    )
    assert result["model_uri"]


@pytest.mark.chaos
def test_killed_client_is_left_out_of_its_round_and_comes_back(
    ray_cluster: Any, prepared: dict[str, Any], tracking_uri: str
) -> None:
    from ray.util.state import list_actors

    run_id = _run("fl-kill")
    # Every client in every round, and rounds long enough to kill one inside a round.
    spec = _fl_spec(
        prepared,
        tracking_uri,
        run_id,
        "fl-kill",
        fl_clients=3,
        fl_clients_per_round=3,
        fl_rounds=8,
        fl_strategy="static",
        fl_local_epochs=40,
        fl_max_local_epochs=40,
        stop_accuracy=0.999,
    )
    logs: list[str] = []
    box: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: box.setdefault(
            "result",
            _runner(logs).run(
                base_id="slaflow-fl-kill", module="ray_jobs.federated", spec=spec, timeout_s=600
            ),
        )
    )
    thread.start()
    gcs = f"127.0.0.1:{ray_cluster.gcs_port}"
    killed = None
    until = time.monotonic() + 400
    while killed is None and time.monotonic() < until and thread.is_alive():
        if any("[slaflow] round 1/" in line for line in logs):
            actors = [
                a
                for a in list_actors(
                    address=gcs,
                    filters=[("class_name", "=", "FederatedClient"), ("state", "=", "ALIVE")],
                    detail=True,
                    raise_on_missing_output=False,
                )
                if a.pid
            ]
            if actors:
                killed = actors[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    thread.join(600)
    assert killed is not None, "training ended before a client could be killed"
    result = box["result"]
    fl = result["federated"]
    record(
        "one federated client's Ray actor SIGKILLed during a round",
        rounds=fl["rounds"],
        rounds_with_a_client_left_out=len(fl["left_out"]),
        participants_per_round=[row["participants"] for row in result["history"]],
    )
    # Training went on: every round ran, rounds are consecutive, one round lost a client.
    assert fl["rounds"] == 8
    assert [row["round"] for row in result["history"]] == list(range(1, 9))
    assert len(fl["left_out"]) >= 1
    # The killed client fails its round; while Ray restarts it, calls to it fail fast
    # (ActorUnavailableError) and it is left out too; then it trains again.
    lost = [(lo["round"], f) for lo in fl["left_out"] for f in lo["failed"]]
    assert {f["kind"] for _, f in lost} == {"died"} and len({f["client"] for _, f in lost}) == 1
    participants = [row["participants"] for row in result["history"]]
    assert min(participants) == 2
    last_lost = max(r for r, _ in lost)
    assert participants[last_lost:] and set(participants[last_lost:]) == {3}
    assert fl["participations"] == sum(participants)


def test_resubmitted_job_resumes_after_its_last_round(
    ray_cluster: Any, prepared: dict[str, Any], tracking_uri: str
) -> None:
    run_id = _run("fl-resume")
    spec = _fl_spec(
        prepared,
        tracking_uri,
        run_id,
        "fl-resume",
        fl_rounds=3,
        fl_strategy="static",
        stop_accuracy=0.999,
    )
    first = _runner([]).run(
        base_id="slaflow-fl-resume", module="ray_jobs.federated", spec=spec, timeout_s=600
    )
    assert first["federated"]["rounds"] == 3 and first["stop_reason"] == "rounds_exhausted"
    # A second attempt of the same run (same run name, new submission) with a larger budget
    # goes on from round 3; it neither repeats nor loses a round.
    logs: list[str] = []
    again = _runner(logs).run(
        base_id="slaflow-fl-resume-2",
        module="ray_jobs.federated",
        spec={**spec, "fl_rounds": 5},
        timeout_s=600,
    )
    assert again["resumed_from"] == 3
    assert [row["round"] for row in again["history"]] == [1, 2, 3, 4, 5]
    assert any("resuming federated training after round 3" in line for line in logs)


def test_a_deadline_that_leaves_no_round_fails_the_job_and_exports_nothing(
    ray_cluster: Any, prepared: dict[str, Any], tracking_uri: str
) -> None:
    """A 1 s deadline is spent starting the clients: the job fails with the reason instead of
    handing an untrained model to evaluation and the registry."""
    from mlflow.tracking import MlflowClient

    from operators.ray_job import RayJobFailed

    run_id = _run("fl-no-round")
    with pytest.raises(RayJobFailed, match="no federated round finished.*relax deadline_s"):
        _runner([]).run(
            base_id="slaflow-fl-no-round",
            module="ray_jobs.federated",
            spec=_fl_spec(prepared, tracking_uri, run_id, "fl-no-round", deadline_s=1.0),
            timeout_s=300,
        )
    run = MlflowClient(tracking_uri).get_run(run_id)
    # The export logs these with the model; none of them may exist.
    assert (
        "best_val_accuracy" not in run.data.metrics and "training_seconds" not in run.data.metrics
    )
