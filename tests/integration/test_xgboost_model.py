"""The XGBoost model format in process: parameters from the task, the exported model's
native predictor in slaflow's output shapes, and its pyfunc-free loading by any consumer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ray_jobs.learners import xgb_output, xgboost_params
from ray_jobs.model_format import ModelMetadata, XGBoostPredictor, export_xgboost, open_predictor

pytestmark = [pytest.mark.integration, pytest.mark.quick]


def _profile(task: str, classes: list) -> dict:
    return {"task": task, "classes": classes, "feature_names": ["a", "b"]}


def test_objective_follows_the_task_and_user_params_pass_through() -> None:
    binary = xgboost_params(
        {"profile": _profile("classification", [0, 1]), "model_params": {"max_depth": 2}}
    )
    assert binary["objective"] == "binary:logistic" and binary["max_depth"] == 2
    multi = xgboost_params({"profile": _profile("classification", ["a", "b", "c"])})
    assert multi["objective"] == "multi:softprob" and multi["num_class"] == 3
    reg = xgboost_params(
        {"profile": _profile("regression", []), "learning_rate": 0.05, "model_params": {"x": 1}}
    )
    assert reg["objective"] == "reg:squarederror" and reg["eta"] == 0.05 and "x" not in reg


def test_outputs_have_slaflows_shapes() -> None:
    out = xgb_output(np.array([0.2, 0.9]), "classification")
    assert np.allclose(out, [[0.8, 0.2], [0.1, 0.9]])
    assert xgb_output(np.array([1.5, 2.5]), "regression").shape == (2, 1)


@pytest.mark.parametrize(
    ("task", "classes"), [("classification", ["no", "yes"]), ("regression", [])]
)
def test_exported_booster_predicts_through_open_predictor(
    tmp_path: Path, task: str, classes: list
) -> None:
    import xgboost as xgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2)).astype("float32")
    y = (x[:, 0] > 0).astype("float32") if task == "classification" else x[:, 0] * 3.0
    params = xgboost_params({"profile": _profile(task, classes), "learning_rate": 0.3})
    booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=20)
    meta = ModelMetadata(("a", "b"), tuple(classes), (), task, None, "xgboost")
    folder = export_xgboost(bytes(booster.save_raw("ubj")), meta, tmp_path / "model")
    predictor = open_predictor(folder)
    assert isinstance(predictor, XGBoostPredictor)
    out = predictor.predict_proba(x[:50])
    if task == "classification":
        assert out.shape == (50, 2) and np.mean(out.argmax(axis=1) == y[:50]) > 0.9
    else:
        assert out.shape == (50, 1) and np.sqrt(np.mean((out[:, 0] - y[:50]) ** 2)) < 0.5
    assert "xgboost|rounds=20" in predictor.signature() and predictor.parameter_count() > 20
