"""Cheaper servable variants of a slaflow model.

``int8``: TensorFlow Lite's dynamic-range quantization of the exported SavedModel
(``tf.lite.TFLiteConverter`` with ``Optimize.DEFAULT``: weights stored as int8, activations in
float, computed with int8 kernels where the op has them), served by LiteRT's interpreter
(``ai-edge-litert``) with no TensorFlow in the replica, so a replica's cold start is a small
file read instead of a TensorFlow import and a SavedModel load. It applies to every Keras
model slaflow exports (the built-in MLP, a user's builder, regression too); models of another
framework (XGBoost) have no variant and are planned with the full model only. The evaluate
job scores it on the test set, and the placement planner weighs that against the full model.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

VARIANT_FULL = "full"
VARIANT_INT8 = "int8"
INT8_FILE = "variant_int8.tflite"
#: Where the variant is logged, under the version's run.
INT8_ARTIFACT_PATH = "serving/int8"


def convert_int8(model_dir: str | Path) -> bytes:
    """The dynamic-range quantized LiteRT flatbuffer of an exported Keras model folder."""
    import tensorflow as tf

    from ray_jobs.model_format import SAVED_MODEL_DIR

    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(Path(model_dir) / SAVED_MODEL_DIR), signature_keys=["serving_default"]
    )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return bytes(converter.convert())


class LiteRTPredictor:
    """``predict_proba`` of the int8 variant through LiteRT's signature runner: class
    probabilities ``[n, classes]`` or values ``[n, 1]``, as the full model answers."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.weight_bytes = Path(path).stat().st_size
        self._interpreter = Interpreter(model_path=str(path), num_threads=max(1, threads))
        self._runner = self._interpreter.get_signature_runner("serving_default")
        # An interpreter is not thread-safe; a replica may call it from several threads.
        self._lock = threading.Lock()

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype="float32")
        if len(x) == 0:
            raise ValueError("no rows to predict")
        with self._lock:
            out = self._runner(features=x)
        return np.asarray(next(iter(out.values())), dtype="float32")


def log_int8_variant(
    model_dir: Path,
    run_id: str,
    artifact_path: str = INT8_ARTIFACT_PATH,
) -> str:
    """Convert the exported model in ``model_dir`` to the int8 variant and log it, with the
    model's metadata, to ``run_id``; returns its artifact URI, which
    ``ModelServer(variant="int8")`` loads. Idempotent: logging again overwrites the same two
    files. Raises ``ValueError`` when the converter cannot convert the model."""
    import tempfile

    import mlflow

    from ray_jobs.model_format import METADATA_FILE

    try:
        flatbuffer = convert_int8(model_dir)
    except Exception as exc:  # the converter's own errors are of many kinds
        raise ValueError(f"LiteRT conversion failed: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="slaflow-variant-") as tmp:
        out = Path(tmp)
        (out / INT8_FILE).write_bytes(flatbuffer)
        (out / METADATA_FILE).write_text((Path(model_dir) / METADATA_FILE).read_text())
        mlflow.MlflowClient().log_artifacts(run_id, str(out), artifact_path)
    return f"runs:/{run_id}/{artifact_path}/{INT8_FILE}"
