"""Cheaper servable variants of a slaflow model.

``int8``: every Dense kernel quantised to int8 with one scale per output unit (symmetric),
biases kept in float32, the standardisation folded in; computed with NumPy (kernels
dequantised once at load). A quarter of the weight bytes, no TensorFlow in the replica (its
cold start is an ``np.load`` instead of a TF import and SavedModel load), and its own measured
accuracy, which the placement planner weighs against the full model's.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

VARIANT_FULL = "full"
VARIANT_INT8 = "int8"
INT8_FILE = "variant_int8.npz"


def quantize_int8(predictor: Any, feature_mean: Any, feature_std: Any) -> dict[str, np.ndarray]:
    """Arrays of the int8 variant, from a loaded ``Predictor`` and the training statistics."""
    variables = predictor.variables
    kernels = [v.numpy() for v in variables if v.name.endswith("kernel:0")]
    biases = [v.numpy() for v in variables if v.name.endswith("bias:0")]
    if not kernels or len(kernels) != len(biases):
        raise ValueError("model has no Dense kernel/bias pairs: cannot build the int8 variant")
    std = np.asarray(feature_std, dtype="float32")
    out: dict[str, np.ndarray] = {
        "mean": np.asarray(feature_mean, dtype="float32"),
        "std": np.where(std > 0, std, 1.0).astype("float32"),
        "layers": np.asarray(len(kernels)),
    }
    for i, (k, b) in enumerate(zip(kernels, biases, strict=True)):
        scale = np.abs(k).max(axis=0) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype("float32")
        out[f"q{i}"] = np.clip(np.round(k / scale), -127, 127).astype("int8")
        out[f"s{i}"] = scale
        out[f"b{i}"] = b.astype("float32")
    return out


def save_int8(arrays: dict[str, np.ndarray], path: Path) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    path.write_bytes(buf.getvalue())
    return path


class Int8Predictor:
    """``predict_proba`` of the int8 variant: standardise, Dense+ReLU, softmax."""

    def __init__(self, path: str | Path) -> None:
        with np.load(path) as z:
            self.mean, self.std = z["mean"], z["std"]
            n = int(z["layers"])
            self.layers = [
                (z[f"q{i}"].astype("float32") * z[f"s{i}"], z[f"b{i}"]) for i in range(n)
            ]
            self.weight_bytes = sum(int(z[f"q{i}"].nbytes) for i in range(n))

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = (np.asarray(features, dtype="float32") - self.mean) / self.std
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < last:
                np.maximum(x, 0.0, out=x)
        x -= x.max(axis=1, keepdims=True)
        np.exp(x, out=x)
        out: np.ndarray = x / x.sum(axis=1, keepdims=True)
        return out


def log_int8_variant(
    predictor: Any,
    model_dir: Path,
    run_id: str,
    feature_mean: Any,
    feature_std: Any,
    artifact_path: str = "serving/int8",
) -> str:
    """Build the int8 variant of a loaded model (``predictor`` over ``model_dir``) and log
    it, with the model's metadata, to ``run_id``; returns its artifact URI, which
    ``ModelServer(variant="int8")`` loads. Idempotent: logging again overwrites the same two
    files."""
    import tempfile

    import mlflow

    from ray_jobs.model_format import METADATA_FILE

    arrays = quantize_int8(predictor, feature_mean, feature_std)
    with tempfile.TemporaryDirectory(prefix="slaflow-variant-") as tmp:
        out = Path(tmp)
        save_int8(arrays, out / INT8_FILE)
        (out / METADATA_FILE).write_text((Path(model_dir) / METADATA_FILE).read_text())
        mlflow.MlflowClient().log_artifacts(run_id, str(out), artifact_path)
    return f"runs:/{run_id}/{artifact_path}/{INT8_FILE}"
