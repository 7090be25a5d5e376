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
    feature_names: tuple[str, ...]  # the model's inputs (encoded: one-hot slots named col=value)
    classes: tuple[Any, ...]  # original label values, index = class id; () for regression
    hidden_units: tuple[int, ...]
    task: str = "classification"
    #: ``ray_jobs.features.FeatureEncoder.to_dict()``: raw columns -> inputs; None: numeric.
    encoding: dict[str, Any] | None = None
    model: str = "mlp"

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    def encoder(self) -> Any:
        from ray_jobs.features import FeatureEncoder

        return FeatureEncoder.of_profile(
            {"encoding": self.encoding, "feature_names": self.feature_names}
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "feature_names": list(self.feature_names),
                "classes": list(self.classes),
                "hidden_units": list(self.hidden_units),
                "task": self.task,
                "encoding": self.encoding,
                "model": self.model,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        d = json.loads(text)
        return cls(
            tuple(d["feature_names"]),
            tuple(d["classes"]),
            tuple(d["hidden_units"]),
            d.get("task", "classification"),
            d.get("encoding"),
            d.get("model", "mlp"),
        )

    @classmethod
    def of(cls, profile: dict[str, Any], hidden_units: Sequence[int], model: str) -> ModelMetadata:
        """The metadata of a model trained on a data profile."""
        return cls(
            tuple(profile["feature_names"]),
            tuple(profile["classes"]),
            tuple(hidden_units),
            profile.get("task", "classification"),
            profile.get("encoding"),
            model,
        )


class UserModelError(RuntimeError):
    """A user's model builder failed; the message names the function and the error."""


def input_spec(profile: dict[str, Any]) -> dict[str, Any]:
    """What a user's model builder is told about its input and output."""
    classes = list(profile["classes"])
    return {
        "width": len(profile["feature_names"]),
        "feature_names": list(profile["feature_names"]),
        "input_columns": list(profile.get("input_columns", profile["feature_names"])),
        "task": profile.get("task", "classification"),
        "n_classes": len(classes),
        "classes": classes,
        "outputs": len(classes) if classes else 1,
    }


def load_builder(target: str) -> Any:
    """The function ``package.module:function`` names."""
    import importlib

    module_name, _, func = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UserModelError(
            f"model {target!r}: importing {module_name!r} failed with "
            f"{type(exc).__name__}: {exc}. Fix: make the module importable on every Ray node "
            f"(installed, or on PYTHONPATH)"
        ) from exc
    fn = getattr(module, func, None)
    if not callable(fn):
        raise UserModelError(f"model {target!r}: {module_name} has no function {func!r}")
    return fn


def build_model(
    profile: dict[str, Any],
    *,
    model: str,
    hidden_units: Sequence[int],
    model_params: dict[str, Any],
    seed: int,
) -> Any:
    """The model to train: the built-in MLP, or the user's builder wrapped between the input
    standardisation and (for regression) the label's scale. Uncompiled."""
    keras = tf_keras()
    keras.utils.set_random_seed(seed)
    spec = input_spec(profile)
    std = np.where(
        np.asarray(profile["feature_std"], dtype="float32") > 0, profile["feature_std"], 1.0
    )
    inputs = keras.Input(shape=(spec["width"],), name="features")
    x = keras.layers.Normalization(
        mean=np.asarray(profile["feature_mean"], dtype="float32"),
        variance=np.square(std).astype("float32"),
    )(inputs)
    if model == "mlp":
        for units in hidden_units:
            x = keras.layers.Dense(units, activation="relu")(x)
        head = (
            keras.layers.Dense(1, name="value")
            if spec["task"] == "regression"
            else keras.layers.Dense(spec["outputs"], activation="softmax", name="probabilities")
        )
        out = head(x)
    else:
        fn = load_builder(model)
        try:
            user = fn(spec, dict(model_params))
        except Exception as exc:
            raise UserModelError(
                f"model builder {model}(input_spec, model_params) raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(user, keras.Model):
            raise UserModelError(
                f"model builder {model} returned {type(user).__name__}, not a tf_keras Model "
                f"(build it with tf_keras: Keras 3 fails under MultiWorkerMirroredStrategy)"
            )
        try:
            out = user(x)
        except Exception as exc:
            raise UserModelError(
                f"model from {model} cannot take the input [batch, {spec['width']}]: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if int(out.shape[-1]) != spec["outputs"]:
            raise UserModelError(
                f"model from {model} outputs {int(out.shape[-1])} value(s) per row; the task "
                f"needs {spec['outputs']} (one value for regression, else class probabilities)"
            )
    if spec["task"] == "regression":
        # The network predicts the standardised label; the model answers in its units.
        out = keras.layers.Rescaling(
            scale=float(profile.get("label_std", 1.0)),
            offset=float(profile.get("label_mean", 0.0)),
            name="label_scale",
        )(out)
    return keras.Model(inputs, out)


def compile_model(model: Any, task: str, learning_rate: float) -> None:
    keras = tf_keras()
    if task == "regression":
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    else:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )


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
    """The built-in classifier MLP of :func:`build_model`, from its dimensions (the tuning,
    federated and MLlib paths, which train the built-in classifier only)."""
    profile = {
        "feature_names": [f"f{i}" for i in range(n_features)],
        "classes": list(range(n_classes)),
        "feature_mean": list(feature_mean),
        "feature_std": list(feature_std),
        "task": "classification",
    }
    return build_model(profile, model="mlp", hidden_units=hidden_units, model_params={}, seed=seed)


def export_saved_model(model: Any, metadata: ModelMetadata, out_dir: Path) -> Path:
    """Write the SavedModel (with a fixed-shape serving signature) and its metadata."""
    import tensorflow as tf

    out_dir.mkdir(parents=True, exist_ok=True)
    spec = tf.TensorSpec([None, metadata.n_features], tf.float32, name="features")

    output = "value" if metadata.regression else "probabilities"

    @tf.function(input_signature=[spec])
    def serve(features: Any) -> dict[str, Any]:
        return {output: model(features, training=False)}

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
        """Class probabilities ``[n, classes]``; for a regression model its values ``[n, 1]``
        (the one output every caller batches and splits the same way)."""
        x = self._tf.constant(np.asarray(features, dtype="float32"))
        out = self._fn(features=x)
        return (out["value"] if self.metadata.regression else out["probabilities"]).numpy()

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


XGBOOST_FILE = "xgboost_model.ubj"


def export_xgboost(booster_raw: bytes, metadata: ModelMetadata, out_dir: Path) -> Path:
    """Write an XGBoost model (its own UBJSON format) and its metadata."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / XGBOOST_FILE).write_bytes(booster_raw)
    (out_dir / METADATA_FILE).write_text(metadata.to_json())
    return out_dir


class XGBoostPredictor:
    """XGBoost's native predictor over an exported model: inputs -> probabilities or values,
    the same interface as :class:`Predictor`."""

    def __init__(self, model_dir: str | Path) -> None:
        import xgboost as xgb

        model_dir = Path(model_dir)
        self.metadata = ModelMetadata.from_json((model_dir / METADATA_FILE).read_text())
        self._xgb = xgb
        self._booster = xgb.Booster(model_file=str(model_dir / XGBOOST_FILE))
        self._booster.set_param({"nthread": 1})
        self.variables: list[Any] = []

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        from ray_jobs.learners import xgb_output

        # inplace_predict: no DMatrix per call (the serving fast path).
        raw = self._booster.inplace_predict(np.asarray(features, dtype="float32"))
        return xgb_output(raw, self.metadata.task)

    def predict_classes(self, features: np.ndarray) -> np.ndarray:
        return np.argmax(self.predict_proba(features), axis=1)

    def parameter_count(self) -> int:
        """Tree nodes: what a prediction walks (the serving-cost proxy)."""
        return int(sum(len(t.splitlines()) for t in self._booster.get_dump()))

    def signature(self) -> str:
        """Trees, depth and inputs: models with the same signature cost about the same."""
        config = json.loads(self._booster.save_config())
        params = config["learner"]["gradient_booster"]["tree_train_param"]
        return (
            f"xgboost|rounds={self._booster.num_boosted_rounds()}|"
            f"max_depth={params.get('max_depth')}|features={self.metadata.n_features}|"
            f"outputs={max(1, len(self.metadata.classes))}"
        )


def open_predictor(model_dir: str | Path) -> Any:
    """The predictor of an exported model, whatever its framework (all answer
    ``predict_proba``, ``parameter_count`` and ``signature``)."""
    meta = ModelMetadata.from_json((Path(model_dir) / METADATA_FILE).read_text())
    if meta.model == "xgboost":
        return XGBoostPredictor(model_dir)
    from ray_jobs.user_loop import LoopPredictor, is_user_loop

    return LoopPredictor(model_dir) if is_user_loop(meta.model) else Predictor(model_dir)


def find_model_dir(root: str | Path) -> Path:
    """The folder holding ``slaflow_model.json`` under a downloaded artifact tree."""
    root = Path(root)
    for candidate in [root, *root.rglob("*")]:
        if (candidate / METADATA_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"no {METADATA_FILE} under {root}: not a slaflow model")


#: What MLflow itself writes into a ``models:/name/version`` download (the name and version
#: it came from): not part of what was registered.
DOWNLOAD_META_FILES = frozenset({"registered_model_meta"})


def artifact_digest(root: str | Path) -> str:
    """SHA-256 of a downloaded artifact tree: every file's path (relative, sorted) and bytes.
    Recorded on the model version at registration, checked by each replica that loads it."""
    import hashlib

    root = Path(root)
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in (root.rglob("*") if root.is_dir() else [root])
        if p.is_file() and p.name not in DOWNLOAD_META_FILES
    )
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() if root.is_dir() else b"")
        digest.update(b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


class ArtifactDigestMismatch(RuntimeError):
    """The downloaded model is not the one registered: it was changed after registration."""


def fetch_verified(model_uri: str, into: str | Path, sha256: str = "") -> Path:
    """Download ``model_uri`` into ``into`` (tracking and registry URIs as set) and, when
    ``sha256`` is given, refuse it unless its ``artifact_digest`` is that: what every Serve
    replica does before it loads a model."""
    import mlflow

    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(into)))
    if sha256 and (found := artifact_digest(root)) != sha256:
        raise ArtifactDigestMismatch(
            f"{model_uri}: the downloaded artifacts' SHA-256 is {found}, the version was "
            f"registered with {sha256}: they changed after registration; not serving them. "
            f"Fix: register a new version from a run (or restore the artifacts)"
        )
    return root
