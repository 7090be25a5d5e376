"""The training job on a real Ray cluster through the Job API, with MLflow on SQLite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import train_spec

pytestmark = pytest.mark.integration


def test_trains_with_two_workers_checkpoints_and_logs(trained: dict[str, Any],
                                                      tracking_uri: str) -> None:
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
    artifacts = {a.path for a in MlflowClient(tracking_uri).list_artifacts(trained["run_id"],
                                                                            "training")}
    assert "training/learning_curve.png" in artifacts


def test_logged_model_predicts_the_test_set(trained: dict[str, Any],
                                            prepared: dict[str, Any]) -> None:
    import mlflow
    import pandas as pd

    from ray_jobs.data_io import read_xy

    model = mlflow.pyfunc.load_model(trained["result"]["model_uri"])
    x, y = read_xy(prepared["paths"]["test"], prepared["feature_names"])
    out = model.predict(pd.DataFrame(x, columns=prepared["feature_names"]))
    accuracy = float(np.mean(out["prediction"].to_numpy() == np.array(prepared["classes"])[y]))
    assert accuracy > 0.8


def test_retry_attaches_to_the_finished_job_instead_of_resubmitting(
        trained: dict[str, Any], prepared: dict[str, Any], tracking_uri: str) -> None:
    runner = trained["runner"]
    again = runner.run(base_id="slaflow-train-fixture", module="ray_jobs.train",
                       spec=train_spec(prepared, tracking_uri, trained["run_id"], "fixture-run"),
                       timeout_s=60)
    assert again == trained["result"]
    from operators.hooks import RayHook

    ids = [j.submission_id for j in RayHook().job_client.list_jobs()
           if (j.submission_id or "").startswith("slaflow-train-fixture")]
    assert ids == ["slaflow-train-fixture"]


def test_resubmitted_run_resumes_from_its_checkpoint(
        trained: dict[str, Any], prepared: dict[str, Any], tracking_uri: str) -> None:
    """A new job for the same run (as after a failed try) trains no epoch again."""
    from operators.hooks import RayHook
    from operators.ray_job import RayJobRunner

    logs: list[str] = []
    result = RayJobRunner(RayHook().job_client, logs.append).run(
        base_id="slaflow-train-fixture-resume", module="ray_jobs.train",
        spec=train_spec(prepared, tracking_uri, trained["run_id"], "fixture-run"),
        timeout_s=300)
    assert result["resumed_from"] is not None
    assert result["epochs"] == 3
    assert any("already trained" in line for line in logs)
    assert not any("[slaflow] epoch" in line for line in logs)


def test_failed_job_reports_its_own_error(ray_cluster: Any, prepared: dict[str, Any],
                                          tracking_uri: str) -> None:
    from operators.hooks import RayHook
    from operators.ray_job import RayJobFailed, RayJobRunner

    spec = train_spec(prepared, tracking_uri, "no-such-run", "broken-run",
                      train_path="/nonexistent/train")
    with pytest.raises(RayJobFailed, match="ended FAILED") as info:
        RayJobRunner(RayHook().job_client, lambda _: None).run(
            base_id="slaflow-train-broken", module="ray_jobs.train", spec=spec, timeout_s=300)
    assert "nonexistent" in str(info.value)
