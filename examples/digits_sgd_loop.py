"""A user's own Ray Train loop in another framework: scikit-learn's SGDClassifier on the 8x8
digits, one ``partial_fit`` pass over the worker's shard per epoch.

Named in a contract as ``"model": "train_loop:examples.digits_sgd_loop:train_loop_per_worker"``.
It is an ordinary Ray Train loop: it resumes from ``ray.train.get_checkpoint()`` and calls
``ray.train.report`` once per epoch with the validation value of the contract's
``target_metric`` and a checkpoint. slaflow decides after each report whether the loop goes
on, stops (target met, deadline, no hope of the target) or resumes on another worker count
from that checkpoint. ``load_predictor`` turns the best checkpoint into the function the
endpoint calls.

What slaflow puts in ``config``: the contract's ``model_params`` as they are, plus
``learning_rate``, ``batch_size``, ``max_epochs``, ``seed``, ``target_metric``,
``input_spec`` (width, feature names, task, classes, the features' mean and std) and
``data`` (``data.epoch(batch_size)`` streams this worker's shard, encoded as serving encodes
requests; ``data.validation()`` gives the validation rows).

With several workers each trains on its own shard and rank 0's model is kept: a loop that
needs its workers in step synchronises them itself (as a Torch loop does through DDP).
"""

from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

PIP_REQUIREMENTS = ["scikit-learn==1.9.1"]
MODEL_FILE = "sgd.pkl"


def _scale(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(spec["feature_mean"], dtype="float32")
    std = np.asarray(spec["feature_std"], dtype="float32")
    return mean, np.where(std > 0, std, 1.0).astype("float32")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    from sklearn.linear_model import SGDClassifier

    spec, data = config["input_spec"], config["data"]
    mean, std = _scale(spec)
    classes = np.arange(spec["n_classes"])
    x_val, y_val = data.validation()
    x_val = (x_val - mean) / std

    model = SGDClassifier(
        loss="log_loss",
        alpha=float(config.get("alpha", 1e-4)),
        learning_rate="constant",
        eta0=float(config["learning_rate"]),
        random_state=int(config["seed"]),
    )
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            model = pickle.loads((Path(d) / MODEL_FILE).read_bytes())
            start = int(json.loads((Path(d) / "epoch.json").read_text())["epoch"])

    fail_at = config.get("fail_at_epoch")  # for the test that a failing loop is named
    for epoch in range(start, int(config["max_epochs"])):
        if fail_at is not None and epoch + 1 >= int(fail_at):
            raise RuntimeError(f"this loop fails in epoch {epoch + 1} on purpose")
        for x, y in data.epoch(config["batch_size"]):
            model.partial_fit((x - mean) / std, y, classes=classes)
        accuracy = float(np.mean(model.predict(x_val) == y_val))
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / MODEL_FILE).write_bytes(pickle.dumps(model))
            (Path(d) / "epoch.json").write_text(json.dumps({"epoch": epoch + 1}))
            ray.train.report(
                {"accuracy": accuracy, "epoch": epoch + 1},
                checkpoint=ray.train.Checkpoint.from_directory(d),
            )


def load_predictor(checkpoint_dir: str, input_spec: dict[str, Any]) -> Any:
    """The serving function: encoded features ``[n, width]`` -> class probabilities."""
    model = pickle.loads((Path(checkpoint_dir) / MODEL_FILE).read_bytes())
    mean, std = _scale(input_spec)

    def predict(x: np.ndarray) -> np.ndarray:
        return model.predict_proba((x - mean) / std)  # type: ignore[no-any-return]

    return predict
