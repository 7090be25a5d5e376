"""One Ray Train worker's setup, shared by the training and calibration jobs."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ray_jobs import data_io


def setup_worker(config: dict[str, Any]) -> tuple[Any, Any, int, np.ndarray, np.ndarray]:
    """Model under MultiWorkerMirroredStrategy, a factory of this worker's input for one
    epoch, steps per epoch, the validation rows.

    The input streams this worker's Ray Data shard (``data_io.ShardStream``): each ``fit``
    call is one pass, so a worker's memory does not grow with the table. Shared by training
    and calibration, so a calibrated epoch is a trained epoch."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import ray.train
    import tensorflow as tf

    from ray_jobs.model_format import compile_model

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    profile = config["profile"]
    x_val, y_val = data_io.read_xy_head(config["val_path"], profile)
    stream = data_io.ShardStream(config, rank, world)

    # One worker needs no collective: MultiWorkerMirroredStrategy would only add its gRPC
    # server and collective setup to every (re)start.
    strategy = (
        tf.distribute.MultiWorkerMirroredStrategy() if world > 1 else tf.distribute.get_strategy()
    )
    with strategy.scope():
        model = model_from_config(config)
        compile_model(model, profile.get("task", "classification"), config["learning_rate"])
    # Each worker trains on its own shard; all run the same number of steps (MWMS needs it):
    # the shards are equal, and a step takes ``batch`` rows on every worker.
    batch = int(config["batch_size"])
    steps = max(1, stream.rows // batch)
    signature = (
        tf.TensorSpec([None, x_val.shape[1]], tf.float32),
        tf.TensorSpec([None], tf.as_dtype(y_val.dtype)),
    )

    def one_pass(_context: Any = None) -> Any:
        return tf.data.Dataset.from_generator(
            lambda: stream.batches(batch, steps), output_signature=signature
        ).prefetch(2)

    # The input is built anew for every ``fit`` (one pass each). Several workers: per-worker
    # datasets (no auto-sharding, no re-batching of a global batch), as Keras documents for
    # MultiWorkerMirroredStrategy input functions.
    def make_input() -> Any:
        return tf.keras.utils.experimental.DatasetCreator(one_pass) if world > 1 else one_pass()

    return model, make_input, steps, x_val, y_val


def model_from_config(config: dict[str, Any]) -> Any:
    """The (uncompiled) model a training spec describes: built-in MLP or the user's builder."""
    from ray_jobs.model_format import build_model

    return build_model(
        config["profile"],
        model=str(config.get("model", "mlp")),
        hidden_units=config["hidden_units"],
        model_params=dict(config.get("model_params") or {}),
        seed=int(config["seed"]),
    )


def validation_scores(
    config: dict[str, Any], prediction: np.ndarray, y_val: np.ndarray
) -> tuple[float, float]:
    """(score of the contract's target metric, loss) on the validation rows: what the
    early stop and the accuracy outlook read each epoch (``policies.Metric.score``)."""
    from policies import compute_metric, metric

    name = str(config.get("target_metric", "accuracy"))
    profile = config["profile"]
    if profile.get("task", "classification") == "regression":
        loss = float(np.mean((prediction.reshape(-1) - y_val) ** 2))
    else:
        loss = float(np.mean(-np.log(np.clip(prediction[np.arange(len(y_val)), y_val], 1e-7, 1.0))))
    value = compute_metric(name, y_val, prediction, len(profile["classes"]))
    return metric(name).score(value), loss


def check_inputs(spec: dict[str, Any], keys: tuple[str, ...] = ("train_path", "val_path")) -> None:
    """Fail at once, naming the path, when a job's input data is not where the spec says:
    inside Ray Train the same error would be retried with a new worker group each time."""
    import pyarrow.fs as pafs

    for key in keys:
        uri = str(spec[key])
        fs, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(
                f"{key} {uri} does not exist on this node: the prepared data must be on storage "
                f"every Ray node reaches (SLAFLOW_DATA_DIR)"
            )
