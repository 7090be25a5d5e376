"""The training job on a real Ray cluster through the Job API, with MLflow on SQLite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import job_runner, train_spec
from tests.reliability import record

pytestmark = pytest.mark.integration


def _mlflow_run(name: str, key: str) -> tuple[str, str]:
    """A run of the tests' experiment (created once, found again on a retry) and the
    experiment's id."""
    from mlflow_config import registry as reg
    from operators.hooks import MlflowHook

    client = MlflowHook().client
    exp = reg.get_or_create_experiment(client, "slaflow/tests", MlflowHook().artifact_location)
    run_id, _ = reg.find_or_create_run(client, exp, name, key, {})
    return run_id, exp


def test_trains_with_two_workers_checkpoints_and_logs(
    trained: dict[str, Any], tracking_uri: str
) -> None:
    result = trained["result"]
    assert result["num_workers"] == 2
    assert result["epochs"] == 3 and result["stop_reason"] == "max_epochs"
    assert result["deadline_met"] is True
    assert [row["epoch"] for row in result["history"]] == [1, 2, 3]
    state = json.loads((Path(result["checkpoint_path"]) / "state.json").read_text())
    assert state["epoch"] == 3
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri).get_metric_history(trained["run_id"], "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert any("[slaflow] epoch 3/3" in line for line in trained["logs"])
    assert any("fed to the workers by ray_data" in line for line in trained["logs"])
    artifacts = {
        a.path for a in MlflowClient(tracking_uri).list_artifacts(trained["run_id"], "training")
    }
    assert "training/learning_curve.png" in artifacts


def test_logged_model_predicts_the_test_set(
    trained: dict[str, Any], prepared: dict[str, Any]
) -> None:
    import mlflow
    import pandas as pd

    from ray_jobs.data_io import read_xy

    model = mlflow.pyfunc.load_model(trained["result"]["model_uri"])
    x, y = read_xy(prepared["paths"]["test"], prepared["feature_names"])
    out = model.predict(pd.DataFrame(x, columns=prepared["feature_names"]))
    accuracy = float(np.mean(out["prediction"].to_numpy() == np.array(prepared["classes"])[y]))
    assert accuracy > 0.8


def test_retry_attaches_to_the_finished_job_instead_of_resubmitting(
    trained: dict[str, Any], prepared: dict[str, Any], tracking_uri: str
) -> None:
    runner = trained["runner"]
    again = runner.run(
        base_id="slaflow-train-fixture",
        module="ray_jobs.train",
        spec=train_spec(prepared, tracking_uri, trained["run_id"], "fixture-run"),
        timeout_s=60,
    )
    assert again == trained["result"]
    from operators.hooks import RayHook

    ids = [
        j.submission_id
        for j in RayHook().job_client.list_jobs()
        if (j.submission_id or "").startswith("slaflow-train-fixture")
    ]
    assert ids == ["slaflow-train-fixture"]


def test_resubmitted_run_resumes_from_its_checkpoint(
    trained: dict[str, Any], prepared: dict[str, Any], tracking_uri: str
) -> None:
    """A new job for the same run (as after a failed try) trains no epoch again."""

    logs: list[str] = []
    result = job_runner(logs.append).run(
        base_id="slaflow-train-fixture-resume",
        module="ray_jobs.train",
        spec=train_spec(prepared, tracking_uri, trained["run_id"], "fixture-run"),
        timeout_s=300,
    )
    assert result["resumed_from"] is not None
    assert result["epochs"] == 3
    assert any("already trained" in line for line in logs)
    assert not any("[slaflow] epoch" in line for line in logs)


def test_failed_job_reports_its_own_error(
    ray_cluster: Any, prepared: dict[str, Any], tracking_uri: str
) -> None:
    from operators.ray_job import RayJobFailed

    spec = train_spec(
        prepared, tracking_uri, "no-such-run", "broken-run", train_path="/nonexistent/train"
    )
    with pytest.raises(RayJobFailed, match="ended FAILED") as info:
        job_runner(lambda _: None).run(
            base_id="slaflow-train-broken", module="ray_jobs.train", spec=spec, timeout_s=300
        )
    assert "nonexistent" in str(info.value)


def test_controller_resizes_for_real_and_loses_no_epoch(
    ray_cluster: Any, prepared: dict[str, Any], tracking_uri: str
) -> None:
    """The deadline policy shrinks 2 workers to 1 when one is enough: checkpoint, restart with
    a new ScalingConfig, resume; every epoch is trained exactly once and the restart is timed.
    """
    from mlflow.tracking import MlflowClient

    run_id, exp = _mlflow_run("resize-run", "resize")
    # Calibration says 2 workers barely beat 1 (poor scaling) and a restart is cheap, with
    # a loose deadline: the controller must judge 2 workers wasteful and drop to 1.
    spec = train_spec(
        prepared,
        tracking_uri,
        run_id,
        "resize-run",
        max_epochs=12,
        prior_epochs=12,
        deadline_s=600.0,
        resize_policy="deadline",
        throughput={"shape": "cpu", "epoch_s": {"1": 0.5, "2": 0.45}, "startup_s": 1.0},
    )
    logs: list[str] = []
    result = job_runner(logs.append).run(
        base_id="slaflow-train-resize", module="ray_jobs.train", spec=spec, timeout_s=600
    )
    workers = [row["workers"] for row in result["history"]]
    assert workers[0] == 2 and workers[-1] == 1, workers
    assert result["resizes"] >= 1
    assert [row["epoch"] for row in result["history"]] == list(range(1, result["epochs"] + 1))
    seg = result["segments"][0]
    assert (seg["from"], seg["to"]) == (2, 1) and seg["resumed_at"] > seg["at_s"]
    assert result["restart_seconds"][0] > 0
    assert any("resizing: 2 -> 1 workers" in line for line in logs)
    assert result["outcome"] in {"target_met", "deadline_truncated", "target_unreachable"}
    assert result["worker_seconds"] > 0
    artifacts = {a.path for a in MlflowClient(tracking_uri).list_artifacts(run_id, "training")}
    assert {"training/allocation.png", "training/allocation.json"} <= artifacts
    steps = MlflowClient(tracking_uri).get_metric_history(run_id, "workers")
    assert sorted({m.value for m in steps}) == [1.0, 2.0]


def test_calibration_measures_each_worker_count(ray_cluster: Any, prepared: dict[str, Any]) -> None:
    from policies import RunContract
    from ray_jobs.specs import calibration_spec
    from slaflow.settings import Endpoints

    contract = RunContract.from_dict({"hidden_units": [32], "learning_rate": 0.01, "seed": 7})
    spec = calibration_spec(
        contract,
        prepared,
        key="testkey0000000",
        shape="cpu",
        worker_counts=[1, 2],
        storage_path=Endpoints.from_env().ray_storage,
    )
    result = job_runner(lambda _: None).run(
        base_id="slaflow-calib-test", module="ray_jobs.calibrate", spec=spec, timeout_s=600
    )
    assert set(result["epoch_s"]) == {"1", "2"}
    assert all(0 < t < 60 for t in result["epoch_s"].values())
    assert result["startup_s"] > 0.5  # a worker group and TensorFlow take time to start


def _run_with_fault(
    module: str, base_id: str, spec: dict[str, Any], after: str, fault: Any
) -> tuple[dict[str, Any], list[str]]:
    """Run a job and, once a log line holds ``after``, call ``fault(logs)`` until it says it
    struck (True); the job's result and log lines."""
    import threading
    import time

    logs: list[str] = []
    runner = job_runner(logs.append)
    box: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: box.setdefault(
            "result", runner.run(base_id=base_id, module=module, spec=spec, timeout_s=600)
        )
    )
    thread.start()
    struck = False
    until = time.monotonic() + 300
    while not struck and time.monotonic() < until and thread.is_alive():
        if any(after in line for line in logs):
            struck = bool(fault(logs))
        time.sleep(0.2)
    thread.join(600)
    assert struck, (
        f"the job ended before the fault ({after!r} seen: {any(after in x for x in logs)})"
    )
    assert "result" in box, "the job failed: " + "\n".join(logs[-20:])
    return box["result"], logs


def _run_killing_one(
    ray_cluster: Any, module: str, base_id: str, spec: dict[str, Any], actor_class: str, after: str
) -> tuple[dict[str, Any], list[str]]:
    """Run a job and SIGKILL the process of one live ``actor_class`` actor once a log line
    holds ``after``."""
    import os
    import signal

    from ray.util.state import list_actors

    def kill(_: list[str]) -> bool:
        actors = [
            a
            for a in list_actors(
                address=f"127.0.0.1:{ray_cluster.gcs_port}",
                filters=[("class_name", "=", actor_class), ("state", "=", "ALIVE")],
                detail=True,
                raise_on_missing_output=False,
            )
            if a.pid
        ]
        if actors:
            os.kill(actors[-1].pid, signal.SIGKILL)
        return bool(actors)

    return _run_with_fault(module, base_id, spec, after, kill)


def _mlflow_server(backend_uri: str, port: int) -> Any:
    """An MLflow tracking server on ``backend_uri``, answering /health."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend_uri,
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    until = time.monotonic() + 90
    while time.monotonic() < until:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return proc
        except requests.RequestException:
            pass
        assert proc.poll() is None, "the MLflow server exited at start"
        time.sleep(0.5)
    raise AssertionError("the MLflow server did not answer /health in 90 s")


@pytest.mark.chaos
def test_training_goes_on_while_mlflow_is_down_and_its_metrics_arrive_later(
    ray_cluster: Any, prepared: dict[str, Any], tracking_uri: str
) -> None:
    """The tracking server stopped for 30 s mid-training: no epoch waits for it (the metrics
    wait in memory), training may end while it is still down (the flush before the export
    waits for it), every epoch's metrics reach the run once it is back, and the run ends
    with its model."""
    import os
    import signal
    import socket
    import time

    from mlflow.tracking import MlflowClient

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = {"proc": _mlflow_server(tracking_uri, port)}
    run_id, _ = _mlflow_run("outage-run", "outage")
    spec = train_spec(
        prepared,
        f"http://127.0.0.1:{port}",
        run_id,
        "outage-run",
        max_epochs=12,
        deadline_s=500.0,
        stop_accuracy=0.999,
    )
    down: dict[str, float] = {}

    def epochs(logs: list[str]) -> int:
        return sum("[slaflow] epoch " in line for line in logs)

    def outage(logs: list[str]) -> bool:
        if "at" not in down:
            os.killpg(server["proc"].pid, signal.SIGKILL)
            server["proc"].wait()
            down.update(at=time.monotonic(), epochs_before=epochs(logs))
            return False
        if time.monotonic() - down["at"] < 30.0:
            return False
        down.update(epochs_while_down=epochs(logs) - down["epochs_before"])
        server["proc"] = _mlflow_server(tracking_uri, port)
        down["for"] = time.monotonic() - down["at"]
        return True

    try:
        result, logs = _run_with_fault(
            "ray_jobs.train", "slaflow-train-outage", spec, "[slaflow] epoch 2/", outage
        )
    finally:
        os.killpg(server["proc"].pid, signal.SIGKILL)
    history = MlflowClient(tracking_uri).get_metric_history(run_id, "val_accuracy")
    record(
        "MLflow tracking server SIGKILLed for 30 s during training",
        down_s=round(down["for"], 1),
        epochs=result["epochs"],
        epochs_trained_while_down=down["epochs_while_down"],
        epoch_metrics_in_mlflow_after=len({m.step for m in history}),
        model_exported=bool(result["model_uri"]),
    )
    assert down["for"] >= 30.0
    assert sorted(m.step for m in history) == list(range(1, result["epochs"] + 1))
    assert result["model_uri"] and result["epochs"] >= 8
    # training went on while the server was down (an epoch takes ~2 s here)
    assert down["epochs_while_down"] >= 5, down
    assert any("took the epoch metrics after" in x or "did not take" in x for x in logs)


@pytest.mark.chaos
def test_tuning_study_stays_inside_its_deadline(
    ray_cluster: Any, prepared: dict[str, Any], tracking_uri: str
) -> None:
    """Optuna trials as parallel Ray actors, nested MLflow runs, best model exported, and the
    whole study (export included) ends before the deadline. The model is a user's Keras CNN
    and the space the user's define-by-run function: its keys reach the builder. One trial's
    actor is SIGKILLed after its first epoch: that trial fails (in Optuna and MLflow) and the
    study goes on."""
    from mlflow.tracking import MlflowClient

    run_id, exp = _mlflow_run("tune-run", "tune")
    spec = train_spec(
        prepared,
        tracking_uri,
        run_id,
        "tune-run",
        max_epochs=6,
        deadline_s=100.0,
        tuning_trials=6,
        stop_accuracy=0.999,
        model="examples.digits_cnn:build",
        model_params={"dense": 24},
        search_space="examples.digits_cnn:search_space",
    )
    result, logs = _run_killing_one(
        ray_cluster, "ray_jobs.tune", "slaflow-tune-test", spec, "TrialWorker", " epoch 1 val_"
    )
    record(
        "one Optuna trial's Ray actor SIGKILLed after its first epoch",
        trials=result["tuning"]["trials"],
        trials_failed=result["tuning"]["failed"],
        deadline_met=result["deadline_met"],
    )
    assert any("lost its actor" in line for line in logs)
    assert result["tuning"]["failed"] == 1
    assert result["training_seconds"] <= 100.0 and result["deadline_met"] is True
    assert result["tuning"]["trials"] >= 3
    assert 0.5 < result["best_val_accuracy"] <= 1.0
    best = result["tuning"]["best_params"]
    assert best["model_params"]["filters"] in (4, 8) and best["batch_size"] == 64
    # dense is drawn only with 8 filters; otherwise the contract's model_params keep theirs
    assert best["model_params"]["dense"] in (
        (16, 32) if best["model_params"]["filters"] == 8 else (24,)
    )
    children = MlflowClient(tracking_uri).search_runs(
        [exp], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'"
    )
    assert len(children) == result["tuning"]["trials"]
    assert [c.info.status for c in children].count("FAILED") == 1  # the killed trial
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED", "FAILED"}
    assert all("filters" in c.data.params["model_params"] for c in children)
    import mlflow

    from ray_jobs.model_format import find_model_dir, open_predictor

    local = mlflow.artifacts.download_artifacts(result["model_uri"])
    signature = open_predictor(find_model_dir(local)).signature()
    assert "conv2d" in signature  # the user's network was tuned and exported, not the MLP


@pytest.mark.chaos
def test_killed_worker_resumes_from_checkpoint_and_replans(
    ray_cluster: Any, prepared: dict[str, Any], tracking_uri: str
) -> None:
    """SIGKILL one Ray Train worker mid-training: Ray Train restarts the group, the loop resumes
    from the last checkpoint (controller state included), and no epoch appears twice."""
    run_id, exp = _mlflow_run("kill-run", "kill")
    spec = train_spec(
        prepared,
        tracking_uri,
        run_id,
        "kill-run",
        max_epochs=10,
        resize_policy="deadline",
        deadline_s=400.0,
    )
    result, logs = _run_killing_one(
        ray_cluster,
        "ray_jobs.train",
        "slaflow-train-kill",
        spec,
        "RayTrainWorker",
        "[slaflow] epoch 3/",
    )
    epochs = [row["epoch"] for row in result["history"]]
    record(
        "one Ray Train worker SIGKILLed after epoch 2",
        epochs=result["epochs"],
        epochs_lost=len(set(range(1, result["epochs"] + 1)) - set(epochs)),
        epochs_twice=len(epochs) - len(set(epochs)),
        deadline_met=result["deadline_met"],
    )
    assert epochs == list(range(1, result["epochs"] + 1))  # nothing lost, nothing twice
    assert any("resumed from checkpoint" in line for line in logs)
    assert result["deadline_met"] is True


SGD_LOOP = "train_loop:examples.digits_sgd_loop:train_loop_per_worker"


def test_a_users_train_loop_is_resized_and_resumes_from_its_own_checkpoint(
    ray_cluster: Any, prepared: dict[str, Any], tracking_uri: str
) -> None:
    """A user's Ray Train loop (scikit-learn, another framework) under the same controller:
    2 workers judged wasteful, so the loop is stopped at a report, restarted on 1 worker and
    resumes from the checkpoint it reported; its own epoch count matches slaflow's at the end,
    so no epoch ran twice or was lost. The best checkpoint is logged as an MLflow pyfunc
    model that answers by class name."""
    import mlflow
    import pandas as pd

    from ray_jobs.data_io import read_xy

    run_id, exp = _mlflow_run("loop-resize-run", "loop-resize")
    spec = train_spec(
        prepared,
        tracking_uri,
        run_id,
        "loop-resize-run",
        model=SGD_LOOP,
        model_params={"alpha": 1e-4},
        max_epochs=6,
        prior_epochs=6,
        deadline_s=600.0,
        resize_policy="deadline",
        throughput={"shape": "cpu", "epoch_s": {"1": 0.5, "2": 0.45}, "startup_s": 1.0},
    )
    logs: list[str] = []
    result = job_runner(logs.append).run(
        base_id="slaflow-train-loop-resize", module="ray_jobs.train", spec=spec, timeout_s=600
    )
    workers = [row["workers"] for row in result["history"]]
    assert workers[0] == 2 and workers[-1] == 1, workers
    assert [row["epoch"] for row in result["history"]] == list(range(1, result["epochs"] + 1))
    assert result["epochs"] == 6 and result["stop_reason"] == "max_epochs"
    # The loop's own count, in the checkpoint it last reported, is slaflow's.
    latest = Path(result["checkpoint_path"]) / "latest" / "epoch.json"
    assert json.loads(latest.read_text())["epoch"] == result["epochs"]
    assert result["best_val_accuracy"] > 0.85  # the reported accuracy, the target metric

    model = mlflow.pyfunc.load_model(result["model_uri"])
    x, y = read_xy(prepared["paths"]["test"], prepared["feature_names"])
    out = model.predict(pd.DataFrame(x, columns=prepared["feature_names"]))
    accuracy = float(np.mean(out["prediction"].to_numpy() == np.array(prepared["classes"])[y]))
    assert accuracy > 0.85


def test_a_users_loop_that_fails_in_epoch_3_fails_the_job_naming_it(
    ray_cluster: Any, prepared: dict[str, Any], tracking_uri: str
) -> None:
    from mlflow.tracking import MlflowClient

    from operators.ray_job import RayJobFailed

    run_id, exp = _mlflow_run("loop-broken-run", "loop-broken")
    spec = train_spec(
        prepared,
        tracking_uri,
        run_id,
        "loop-broken-run",
        model=SGD_LOOP,
        model_params={"fail_at_epoch": 3},
        num_workers=1,
        max_epochs=5,
        max_failures=0,  # the same error on every try: one is enough to read it
    )
    logs: list[str] = []
    with pytest.raises(RayJobFailed) as info:
        job_runner(logs.append).run(
            base_id="slaflow-train-loop-broken", module="ray_jobs.train", spec=spec, timeout_s=600
        )
    text = str(info.value) + "\n".join(logs)
    assert "examples.digits_sgd_loop:train_loop_per_worker" in text
    assert "fails in epoch 3 on purpose" in text
    assert not [a for a in MlflowClient(tracking_uri).list_artifacts(run_id) if a.path == "model"]


def test_xgboost_trains_on_two_workers_in_one_collective(
    ray_cluster: Any, prepared: dict[str, Any], tracking_uri: str
) -> None:
    """Ray Train's XGBoost trainer joins two workers, each streaming its own shard, in one
    collective: the trees see both shards, and the exported booster classifies the digits."""
    import mlflow

    from ray_jobs.data_io import read_xy
    from ray_jobs.model_format import find_model_dir, open_predictor

    run_id, exp = _mlflow_run("xgb2-run", "xgb2")
    spec = train_spec(
        prepared,
        tracking_uri,
        run_id,
        "xgb2-run",
        model="xgboost",
        model_params={"max_depth": 3, "rounds_per_epoch": 5},
        learning_rate=0.3,
        max_epochs=2,
        prior_epochs=2,
    )
    logs: list[str] = []
    result = job_runner(logs.append).run(
        base_id="slaflow-train-xgb2", module="ray_jobs.train", spec=spec, timeout_s=600
    )
    assert result["num_workers"] == 2 and [r["workers"] for r in result["history"]] == [2, 2]
    assert result["epochs"] == 2 and result["best_val_accuracy"] > 0.85
    # a small split: each worker reads its share of the files, no Ray Data start
    assert any("fed to the workers by files" in line for line in logs)
    shard = prepared["split_counts"]["train"] // 2
    assert any(f"xgboost collective of 2 worker(s), {shard} rows" in line for line in logs)
    predictor = open_predictor(
        find_model_dir(mlflow.artifacts.download_artifacts(result["model_uri"]))
    )
    assert predictor.signature().startswith("xgboost|rounds=10|")  # 2 epochs x 5 rounds
    x, y = read_xy(prepared["paths"]["test"], prepared["feature_names"])
    assert float(np.mean(predictor.predict_classes(x) == y)) > 0.85
