"""The examples under ``examples/`` (``CONF=examples/NAME.json make demo``) through
``ml_lifecycle`` on the real stack: a table with text columns and string labels served by raw
rows, a regression judged by RMSE, a user's own Keras CNN, and a user's model that fails.

Each has its own model name; the serving ones take their model off the endpoint at the end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Traffic and an SLO these 2-core runs can plan for (as the lifecycle tests' SMALL).
SERVE = {"expected_rps": 5.0, "peak_rps": 20.0, "latency_slo_ms": 300.0}
#: The stages that train and judge a model; the serving ones are marked done.
TO_GATE = ("plan", "prepare", "feasibility", "train", "evaluate", "register", "gate")


def example(name: str, **override: Any) -> dict[str, Any]:
    return {**json.loads((EXAMPLES / f"{name}.json").read_text()), **override}


def _states(out: dict[str, Any]) -> dict[str, str]:
    return {t: v["state"] for t, v in out["tasks"].items()}


def _undeploy(name: str) -> None:
    from operators.hooks import ServeHook

    ServeHook().undeploy(name)


def test_text_columns_and_string_labels_are_served_by_raw_rows(
    lifecycle: Any, registry: Any
) -> None:
    conf = example("tickets_text", **SERVE)
    name = conf["model_name"]
    try:
        out = lifecycle(conf)
        assert out["state"] == "success", _states(out)
        prepared = out["tasks"]["prepare"]["value"]
        assert prepared["task"] == "classification" and prepared["split"] == "stratified"
        assert {"channel", "product.area", "plan", "country"} <= set(
            prepared["categorical_columns"]
        )
        assert "ticket id" not in prepared["input_columns"]  # drop_columns
        assert "account age (days)" in prepared["input_columns"]  # a name with spaces
        # the published profile counts the data's values and shows none of them
        assert prepared["classes_count"] == 5 and prepared["vocabulary_sizes"]["plan"] >= 2
        assert "finance" not in json.dumps(prepared) and "billing" not in json.dumps(prepared)
        evaluation = out["tasks"]["evaluate"]["value"]
        assert evaluation["test_f1_macro"] >= 0.8 and evaluation["test_metric"] == "f1_macro"
        version = registry.get_model_version_by_alias(name, "champion")
        assert float(version.tags["slaflow.test_f1_macro"]) == pytest.approx(
            evaluation["test_f1_macro"]
        )
        url = out["tasks"]["deploy"]["value"]["endpoint_url"]
        row = {
            "channel": "chat",
            "product.area": "billing",
            "plan": "free",
            "country": "never-seen",  # out of vocabulary: its own slot, not an error
            "words": 50,
            "account age (days)": 10,
        }
        resp = requests.post(url, json={"instances": [row]}, timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["predictions"] == ["finance"]  # a class name, not an index
        missing = requests.post(url, json={"instances": [{"channel": "chat"}]}, timeout=30)
        assert missing.status_code == 422, missing.text
        assert "instances[0].product.area: Field required" in missing.json()["error"]
        doc = requests.get(f"{url}/openapi.json", timeout=30).json()  # the table's own columns
        assert "account age (days)" in doc["components"]["schemas"]["Row"]["properties"]
    finally:
        _undeploy(name)


def test_regression_with_an_rmse_target_is_gated_served_and_verified(
    lifecycle: Any, registry: Any
) -> None:
    conf = example("diabetes_rmse", **SERVE)
    name = conf["model_name"]
    try:
        out = lifecycle(conf)
        assert out["state"] == "success", _states(out)
        prepared = out["tasks"]["prepare"]["value"]
        assert prepared["task"] == "regression" and prepared["classes_count"] == 0
        # 442 rows at 0.15/0.15: the fractions held exactly, not left to a per-row draw
        assert prepared["split_counts"] == {"train": 310, "val": 66, "test": 66}
        evaluation = out["tasks"]["evaluate"]["value"]
        assert evaluation["test_rmse"] <= conf["target_value"]
        assert {"test_mae", "test_r2"} <= set(evaluation) and "test_accuracy" not in evaluation
        gate = out["tasks"]["gate"]["value"]["decision"]
        assert gate["promote"] and gate["metric_name"] == "rmse"
        assert "PASS target_rmse: rmse" in " ".join(
            f"{'PASS' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}"
            for c in gate["checks"]
        )
        verify = out["tasks"]["verify"]["value"]["verify"]
        assert verify["passed"] and any(r.startswith("PASS served_rmse") for r in verify["reasons"])
        url = out["tasks"]["deploy"]["value"]["endpoint_url"]
        row = [59.0, 2.0, 32.1, 101.0, 157.0, 93.2, 38.0, 4.0, 4.8598, 87.0]
        resp = requests.post(url, json={"instances": [row]}, timeout=30)
        assert resp.status_code == 200, resp.text
        value = resp.json()["predictions"][0]
        assert isinstance(value, float) and 25.0 <= value <= 346.0  # the label's range
    finally:
        _undeploy(name)


def test_a_users_keras_cnn_trains_under_the_contract(lifecycle: Any, registry: Any) -> None:
    conf = example("digits_cnn")
    out = lifecycle(conf, only=TO_GATE)
    assert out["state"] == "success", _states(out)
    train = out["tasks"]["train"]["value"]
    assert train["deadline_met"] and train["epochs"] >= 1
    evaluation = out["tasks"]["evaluate"]["value"]
    assert evaluation["test_accuracy"] >= conf["target_value"]
    assert "conv2d" in evaluation["model_signature"]  # the user's network, not the MLP
    # LiteRT converts the user's network too: its int8 variant is smaller and scored
    variants = evaluation["variants"]
    assert sorted(variants) == ["full", "int8"], variants
    assert variants["int8"]["size_bytes"] < variants["full"]["size_bytes"]
    assert variants["int8"]["accuracy"] >= variants["full"]["accuracy"] - 0.03
    assert out["tasks"]["gate"]["value"]["decision"]["promote"]


def test_a_failing_user_model_fails_its_task_naming_the_function(
    lifecycle: Any, registry: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    name = "digits-broken"
    conf = example("digits_cnn", model_name=name, model="examples.digits_cnn:broken")
    out = lifecycle(conf, only=("plan", "prepare", "feasibility", "train"))
    states = _states(out)
    assert out["state"] == "failed", states
    assert "failed" in states["feasibility"]  # its calibration builds the model first
    assert out["tasks"].get("train", {}).get("value") is None
    logged = capfd.readouterr()
    text = logged.out + logged.err
    assert "examples.digits_cnn:broken" in text and "broken on purpose" in text
    assert registry.search_model_versions(f"name = '{name}'") == []


def test_xgboost_through_ray_train_is_judged_by_roc_auc_and_served(
    lifecycle: Any, registry: Any
) -> None:
    conf = example("breast_cancer_xgboost", **SERVE)
    name = conf["model_name"]
    try:
        out = lifecycle(conf)
        assert out["state"] == "success", _states(out)
        train = out["tasks"]["train"]["value"]
        assert train["deadline_met"] and 1 <= train["epochs"] <= conf["max_epochs"]
        evaluation = out["tasks"]["evaluate"]["value"]
        assert evaluation["test_roc_auc"] >= conf["target_value"]
        assert evaluation["model_signature"].startswith("xgboost|")
        assert list(evaluation["variants"]) == ["full"]  # LiteRT converts Keras models only
        url = out["tasks"]["deploy"]["value"]["endpoint_url"]
        info = requests.get(url, timeout=30).json()
        row = [0.0] * len(info["features"])
        resp = requests.post(url, json={"instances": [row]}, timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["predictions"][0] in (0, 1) and len(body["probabilities"][0]) == 2
    finally:
        _undeploy(name)


def test_a_users_ray_train_loop_in_another_framework_is_gated_and_served(
    lifecycle: Any, registry: Any
) -> None:
    """scikit-learn through the user's own train_loop_per_worker: trained under the contract,
    logged as an MLflow pyfunc model, gated, served through the same router, and the registry's
    pyfunc model answers as the endpoint does."""
    import mlflow
    import pandas as pd

    conf = example("digits_sgd_loop", **SERVE)
    name = conf["model_name"]
    try:
        out = lifecycle(conf)
        assert out["state"] == "success", _states(out)
        train = out["tasks"]["train"]["value"]
        assert train["deadline_met"] and train["stop_reason"] == "target_met"
        evaluation = out["tasks"]["evaluate"]["value"]
        assert evaluation["test_accuracy"] >= conf["target_value"] - 0.03
        assert evaluation["model_signature"].startswith(
            "train_loop|examples.digits_sgd_loop:train_loop_per_worker|features=64"
        )
        assert list(evaluation["variants"]) == ["full"]  # no converter for a user's loop
        assert out["tasks"]["gate"]["value"]["decision"]["promote"]
        url = out["tasks"]["deploy"]["value"]["endpoint_url"]
        rows = json.loads((EXAMPLES / "digit_request.json").read_text())["instances"]
        resp = requests.post(url, json={"instances": rows}, timeout=30)
        assert resp.status_code == 200, resp.text
        served = resp.json()["predictions"]
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        columns = requests.get(url, timeout=30).json()["features"]
        local = model.predict(pd.DataFrame(rows, columns=columns))["prediction"].tolist()
        assert served == local and len(served) == len(rows)
    finally:
        _undeploy(name)
