"""Contract v2's quality side: metrics, scores, task inference, migration, and the gate in
another metric than accuracy. Also the feature encoder shared by training and serving."""

from __future__ import annotations

import numpy as np
import pytest

from policies import (
    ChampionRecord,
    ContractError,
    RunContract,
    compute_metric,
    decide_promotion,
    infer_task,
    metric,
    metric_interval,
    migrate_contract,
    regression_tolerance,
)
from ray_jobs.features import EncodingError, FeatureEncoder


def test_metrics_match_their_definitions() -> None:
    y = np.array([0, 1, 1, 0, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9]])
    assert compute_metric("accuracy", y, proba) == pytest.approx(0.8)
    # class 0: tp 2 fp 1 fn 0 -> 0.8; class 1: tp 2 fp 0 fn 1 -> 0.8
    assert compute_metric("f1_macro", y, proba) == pytest.approx(0.8)
    # positives scored 0.8, 0.4, 0.9; negatives 0.1, 0.3: 6 pairs, all ordered right
    assert compute_metric("roc_auc", y, proba) == pytest.approx(1.0)
    truth, pred = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 6.0])
    assert compute_metric("rmse", truth, pred) == pytest.approx(1.0)
    assert compute_metric("mae", truth, pred) == pytest.approx(0.5)
    assert compute_metric("r2", truth, pred) == pytest.approx(1 - 4 / 5)


def test_roc_auc_counts_ties_half() -> None:
    assert compute_metric("roc_auc", np.array([0, 1]), np.array([0.5, 0.5])) == 0.5


def test_scores_put_every_metric_on_one_scale() -> None:
    rmse, acc = metric("rmse"), metric("accuracy")
    assert rmse.score(40.0) > rmse.score(50.0)  # less error, higher score
    assert rmse.value(rmse.score(52.5)) == pytest.approx(52.5)
    assert rmse.score(50.0) - rmse.score(55.0) == pytest.approx(5.0)  # gain in the metric's units
    assert acc.score(0.9) == 0.9 and rmse.gain(50.0, 55.0) == 5.0


def test_intervals_cover_the_point_and_are_seeded() -> None:
    rng = np.random.default_rng(1)
    truth = rng.normal(size=200)
    pred = truth + rng.normal(scale=0.5, size=200)
    lo, hi = metric_interval("rmse", truth, pred)
    assert lo < compute_metric("rmse", truth, pred) < hi
    assert (lo, hi) == metric_interval("rmse", truth, pred)


@pytest.mark.parametrize(
    ("values", "numeric", "task"),
    [
        (["cat", "dog"], False, "classification"),
        ([0.5, 1.25, 3.0], True, "regression"),
        (list(range(100)), True, "regression"),
        ([0, 1], True, None),
        ([1, 2, 3, 4, 5], True, None),
    ],
)
def test_task_is_inferred_only_when_unambiguous(values: list, numeric: bool, task: str) -> None:
    assert infer_task(values, numeric, 1000).task == task


def test_v1_contract_migrates_with_a_note() -> None:
    raw, notes = migrate_contract({"target_accuracy": 0.8, "deadline_s": 60})
    assert raw["target_metric"] == "accuracy" and raw["target_value"] == 0.8
    assert notes and "target_accuracy" in notes[0]
    c = RunContract.from_dict({"contract_version": 1, "target_accuracy": 0.8})
    assert c.target_metric == "accuracy" and c.target_score == 0.8 and c.contract_version == 2
    assert migrate_contract({"deadline_s": 60})[1] == []  # v2 needs no note


def test_v1_field_with_another_metric_is_refused() -> None:
    with pytest.raises(ContractError) as info:
        RunContract.from_dict({"target_accuracy": 0.8, "target_metric": "rmse"})
    assert info.value.field == "target_accuracy"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"task": "regression"}, "target_metric"),  # accuracy is not a regression metric
        ({"target_metric": "rmse", "target_value": 0}, "target_value"),
        ({"target_metric": "r2", "target_value": 1.0}, "target_value"),
        ({"split": "time"}, "time_column"),
        ({"feature_columns": ["label"]}, "feature_columns"),
        ({"feature_columns": ["a"], "drop_columns": ["a"]}, "drop_columns"),
        (
            {"target_metric": "rmse", "target_value": 5, "training_mode": "federated"},
            "training_mode",
        ),
        ({"model_params": {"x": float("nan")}}, "model_params"),
    ],
)
def test_v2_cross_field_rules_name_the_field(raw: dict, field: str) -> None:
    with pytest.raises(ContractError) as info:
        RunContract.from_dict(raw)
    assert info.value.field == field and info.value.fix


def test_v2_contract_round_trips() -> None:
    c = RunContract.from_dict(
        {
            "task": "regression",
            "target_metric": "rmse",
            "target_value": 55.0,
            "model": "examples.diabetes:build",
            "model_params": {"units": [32, 16]},
            "drop_columns": ["id"],
        }
    )
    assert RunContract.from_dict(c.to_dict()) == c
    assert RunContract.from_validated(c.to_dict()) == c
    assert c.target_score == pytest.approx(1 - 55.0)


def test_gate_judges_rmse_lower_is_better_with_gain_in_its_units() -> None:
    rmse = metric("rmse")
    champ = ChampionRecord("3", rmse.score(56.0))
    d = decide_promotion(rmse.score(54.0), rmse.score(58.0), 1.0, champ, "rmse")
    assert d.promote, d.reasons
    assert "rmse 54.0000" in d.reasons[0] and "target_rmse" in d.reasons[0]
    d = decide_promotion(rmse.score(55.5), rmse.score(58.0), 1.0, champ, "rmse")
    assert not d.promote and "gain +0.5000" in d.reasons[1]
    d = decide_promotion(rmse.score(59.0), rmse.score(58.0), 0.0, None, "rmse")
    assert not d.promote


def test_regression_tolerance_grows_with_the_worse_model() -> None:
    assert regression_tolerance(10.0, 20.0) == 40.0


def _encoder() -> FeatureEncoder:
    return FeatureEncoder.from_dict(
        {
            "columns": [
                {"name": "age", "kind": "numeric"},
                {"name": "home city", "kind": "categorical", "vocab": ["paris", "rome"]},
            ]
        }
    )


def test_encoder_one_hot_with_an_out_of_vocabulary_slot() -> None:
    enc = _encoder()
    assert enc.width == 4
    assert enc.encoded_names() == ["age", "home city=paris", "home city=rome", "home city=<oov>"]
    x = enc.encode_rows([{"age": 30, "home city": "rome"}, [40.5, "oslo"], [1, None]])
    assert x.tolist() == [[30, 0, 1, 0], [40.5, 0, 0, 1], [1, 0, 0, 1]]


def test_encoder_frame_and_rows_agree() -> None:
    import pandas as pd

    enc = _encoder()
    frame = pd.DataFrame({"age": [1.0, 2.0], "home city": ["paris", None]})
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    assert np.array_equal(enc.encode_frame(frame), enc.encode_rows(rows))


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"age": 1}, "lacks feature"),
        ({"age": "old", "home city": "rome"}, "finite number"),
        ({"age": 1e39, "home city": "rome"}, "float32 range"),
        ({"age": 10**400, "home city": "rome"}, "float32 range"),
        ({"age": 1, "home city": {"a": 1}}, "text category"),
        ([1, 2, 3], "list of 2 values"),
    ],
)
def test_encoder_names_the_bad_cell(row: object, words: str) -> None:
    with pytest.raises(EncodingError, match=words):
        _encoder().encode_rows([row])


def test_a_test_set_too_small_never_promotes_silently() -> None:
    from policies import MIN_TEST_ROWS, review_request

    d = decide_promotion(0.95, 0.9, 0.0, None, test_rows=6)
    assert not d.promote and "6 test rows" in d.reasons[-1] and "test_fraction" in d.reasons[-1]
    asked = review_request(d, policy="borderline", accuracy_noise=0.1, margin=0.0)
    assert asked.required and "6 test rows" in asked.reasons[0]
    refused = review_request(d, policy="never", accuracy_noise=0.1, margin=0.0)
    assert not refused.required
    assert decide_promotion(0.95, 0.9, 0.0, None, test_rows=MIN_TEST_ROWS).promote


def test_the_accuracy_outlook_reads_error_metrics_too() -> None:
    """RMSE scores (1 - rmse) are far below 0: the curve fit and the plateau rule still apply."""
    from policies import assess_target

    rmse = metric("rmse")
    improving = [rmse.score(v) for v in (80, 70, 64, 61, 59, 58)]
    outlook = assess_target(improving, rmse.score(50.0), epochs_affordable=200)
    assert outlook.reachable and "on track" in outlook.detail
    stalled = [rmse.score(v) for v in (61, 58, 57, 58, 59, 60, 61, 62, 63, 64)]
    outlook = assess_target(stalled, rmse.score(50.0), epochs_affordable=100)
    assert not outlook.reachable and "plateau" in outlook.detail


def test_a_metric_must_fit_the_prepared_task() -> None:
    from policies import task_fit_problem

    assert task_fit_problem("rmse", "regression", 0, "y") is None
    wrong = task_fit_problem("accuracy", "regression", 0, "y")
    assert wrong and "'target_metric'" in wrong and "set task to 'classification'" in wrong
    multi = task_fit_problem("roc_auc", "classification", 3, "y")
    assert multi and "needs 2 classes" in multi
