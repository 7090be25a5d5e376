"""The one model format slaflow trains, evaluates and serves.

Training uses tf-keras (Keras 2) because Keras 3 fails under MultiWorkerMirroredStrategy.
What leaves training is a TensorFlow SavedModel with a ``serving_default`` signature plus a
small ``slaflow_model.json`` (features, classes). Loading it needs TensorFlow only, not a
particular Keras, and gives a compiled concrete function: the fast path used by evaluation
and serving (never ``model.predict`` per request).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

METADATA_FILE = "slaflow_model.json"
SAVED_MODEL_DIR = "saved_model"


@dataclass(frozen=True)
class ModelMetadata:
    feature_names: tuple[str, ...]
    classes: tuple[Any, ...]  # original label values, index = class id
    hidden_units: tuple[int, ...]

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def to_json(self) -> str:
        return json.dumps(
            {
                "feature_names": list(self.feature_names),
                "classes": list(self.classes),
                "hidden_units": list(self.hidden_units),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        d = json.loads(text)
        return cls(tuple(d["feature_names"]), tuple(d["classes"]), tuple(d["hidden_units"]))


def tf_keras() -> Any:
    """tf-keras (Keras 2) with TF_USE_LEGACY_KERAS set: Keras 3 fails under
    MultiWorkerMirroredStrategy."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras

    return tf_keras


def build_mlp(
    n_features: int,
    n_classes: int,
    hidden_units: Sequence[int],
    feature_mean: Sequence[float],
    feature_std: Sequence[float],
    seed: int,
) -> Any:
    """A standardising MLP: (x - mean) / std, Dense+ReLU layers, softmax over classes."""
    keras = tf_keras()
    keras.utils.set_random_seed(seed)
    std = np.where(np.asarray(feature_std, dtype="float32") > 0, feature_std, 1.0)
    inputs = keras.Input(shape=(n_features,), name="features")
    x = keras.layers.Normalization(
        mean=np.asarray(feature_mean, dtype="float32"), variance=np.square(std).astype("float32")
    )(inputs)
    for units in hidden_units:
        x = keras.layers.Dense(units, activation="relu")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs)


def export_saved_model(model: Any, metadata: ModelMetadata, out_dir: Path) -> Path:
    """Write the SavedModel (with a fixed-shape serving signature) and its metadata."""
    import tensorflow as tf

    out_dir.mkdir(parents=True, exist_ok=True)
    spec = tf.TensorSpec([None, metadata.n_features], tf.float32, name="features")

    @tf.function(input_signature=[spec])
    def serve(features: Any) -> dict[str, Any]:
        return {"probabilities": model(features, training=False)}

    tf.saved_model.save(
        model, str(out_dir / SAVED_MODEL_DIR), signatures={"serving_default": serve}
    )
    (out_dir / METADATA_FILE).write_text(metadata.to_json())
    return out_dir


class Predictor:
    """Compiled fast path over an exported model: float32 [n, features] -> probabilities."""

    def __init__(self, model_dir: str | Path) -> None:
        import tensorflow as tf

        model_dir = Path(model_dir)
        self.metadata = ModelMetadata.from_json((model_dir / METADATA_FILE).read_text())
        self._loaded = tf.saved_model.load(str(model_dir / SAVED_MODEL_DIR))
        self._fn = self._loaded.signatures["serving_default"]
        self._tf = tf

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = self._tf.constant(np.asarray(features, dtype="float32"))
        return self._fn(features=x)["probabilities"].numpy()

    @property
    def variables(self) -> list[Any]:
        """The serving function's variables (kernels, biases, normalisation statistics)."""
        return list(self._fn.variables)

    def parameter_count(self) -> int:
        """Weights the serving function computes with: the model's serving-cost proxy."""
        return int(sum(int(np.prod(v.shape)) for v in self._fn.variables))

    def signature(self) -> str:
        """The architecture and weight shapes, e.g. ``normalization/mean:0=64|dense/kernel:0=
        64x32|...``: two models with the same signature cost the same to serve."""
        return "|".join(
            f"{v.name}={'x'.join(str(d) for d in v.shape)}"
            for v in sorted(self._fn.variables, key=lambda v: v.name)
        )

    def predict_classes(self, features: np.ndarray) -> np.ndarray:
        return np.argmax(self.predict_proba(features), axis=1)


def find_model_dir(root: str | Path) -> Path:
    """The folder holding ``slaflow_model.json`` under a downloaded artifact tree."""
    root = Path(root)
    for candidate in [root, *root.rglob("*")]:
        if (candidate / METADATA_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"no {METADATA_FILE} under {root}: not a slaflow model")
