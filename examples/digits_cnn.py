"""A user's own Keras model: a small CNN over the 8x8 digits, seen as images.

Named in a contract as ``"model": "examples.digits_cnn:build"``. slaflow calls
``build(input_spec, model_params)`` on every training worker and at export; the model it
returns gets the standardised feature vector (``input_spec["width"]`` numbers) and must end in
``input_spec["outputs"]`` class probabilities. Build it with ``tf_keras`` (Keras 2): Keras 3
fails under Ray Train's MultiWorkerMirroredStrategy.
"""

from __future__ import annotations

import math
from typing import Any


def build(input_spec: dict[str, Any], model_params: dict[str, Any]) -> Any:
    import tf_keras as keras

    side = math.isqrt(input_spec["width"])
    if side * side != input_spec["width"]:
        raise ValueError(f"expects square images, got {input_spec['width']} features")
    filters = int(model_params.get("filters", 16))
    dense = int(model_params.get("dense", 64))
    return keras.Sequential(
        [
            keras.layers.Reshape((side, side, 1), input_shape=(input_spec["width"],)),
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(filters * 2, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(dense, activation="relu"),
            keras.layers.Dense(input_spec["outputs"], activation="softmax"),
        ],
        name="digits_cnn",
    )


def search_space(trial: Any) -> dict[str, Any]:
    """The CNN's tuning space, Optuna define-by-run (contract: ``"tuning_trials": N,
    "search_space": "examples.digits_cnn:search_space"``): ``learning_rate`` and
    ``batch_size`` set the contract's fields, ``filters`` and ``dense`` go to ``build`` as
    ``model_params``. The dense layer is drawn only for the wider convolutions."""
    filters = trial.suggest_categorical("filters", [4, 8])
    space = {
        "filters": filters,
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True),
        "batch_size": 64,
    }
    if filters == 8:
        space["dense"] = trial.suggest_categorical("dense", [16, 32])
    return space


def broken(input_spec: dict[str, Any], model_params: dict[str, Any]) -> Any:
    """A builder that fails, for the test that a user's error names the user's function."""
    raise RuntimeError("this builder is broken on purpose")
