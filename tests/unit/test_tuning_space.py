"""The tuning study's search space (``ray_jobs.tune.suggest``): the built-in space and a
user's define-by-run function, on Optuna's FixedTrial (no Ray, no TensorFlow)."""

from __future__ import annotations

from typing import Any

import pytest

optuna = pytest.importorskip("optuna")

from ray_jobs.model_format import UserModelError  # noqa: E402
from ray_jobs.tune import suggest  # noqa: E402

SPEC: dict[str, Any] = {
    "model": "mlp",
    "model_params": {"dense": 24},
    "learning_rate": 0.01,
    "batch_size": 32,
    "hidden_units": [64, 64],
    "search_space": "",
}


def test_builtin_space_draws_layers_for_the_mlp_only() -> None:
    trial = optuna.trial.FixedTrial(
        {"learning_rate": 0.003, "batch_size": 128, "hidden_units": "128-64"}
    )
    params = suggest(trial, SPEC)
    assert params == {
        "learning_rate": 0.003,
        "batch_size": 128,
        "hidden_units": [128, 64],
        "model_params": {"dense": 24},
    }
    cnn = suggest(
        optuna.trial.FixedTrial({"learning_rate": 0.003, "batch_size": 64}),
        {**SPEC, "model": "examples.digits_cnn:build"},
    )
    assert cnn["hidden_units"] == [64, 64]  # the builder's network is not the MLP's layers


def test_a_users_space_sets_contract_fields_and_model_params() -> None:
    spec = {
        **SPEC,
        "model": "examples.digits_cnn:build",
        "search_space": "examples.digits_cnn:search_space",
    }
    small = suggest(optuna.trial.FixedTrial({"filters": 4, "learning_rate": 0.002}), spec)
    assert small == {
        "learning_rate": 0.002,
        "batch_size": 64,
        "hidden_units": [64, 64],
        "model_params": {"dense": 24, "filters": 4},
    }
    wide = suggest(
        optuna.trial.FixedTrial({"filters": 8, "learning_rate": 0.002, "dense": 16}), spec
    )
    assert wide["model_params"] == {"dense": 16, "filters": 8}
    assert SPEC["model_params"] == {"dense": 24}  # the contract's dict is not changed


def test_a_failing_space_is_named() -> None:
    spec = {**SPEC, "search_space": "examples.digits_cnn:broken"}
    with pytest.raises(UserModelError, match=r"examples.digits_cnn:broken\(trial\) raised"):
        suggest(optuna.trial.FixedTrial({}), spec)
    with pytest.raises(UserModelError, match="no function"):
        suggest(optuna.trial.FixedTrial({}), {**SPEC, "search_space": "examples.digits_cnn:nope"})
