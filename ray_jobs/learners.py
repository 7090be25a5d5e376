"""What one training worker trains, behind one small interface, so every framework runs under
the same per-epoch loop (``ray_jobs.train``): the deadline controller, the quality early stop,
checkpoints and the export.

A learner trains one *epoch* per call (Keras: one pass over the worker's shard; XGBoost:
``rounds_per_epoch`` boosting rounds), predicts the validation rows, and hands out a
*snapshot* of its state (Keras: the weights; XGBoost: the booster's bytes) that the loop keeps
as the best model, checkpoints and exports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ray_jobs import data_io

XGBOOST = "xgboost"
USER_LOOP = "train_loop"
#: Boosting rounds per epoch of the loop (the controller decides between epochs).
DEFAULT_ROUNDS_PER_EPOCH = 10


def framework(config: dict[str, Any]) -> str:
    model = str(config.get("model", "mlp"))
    if model == XGBOOST:
        return XGBOOST
    return USER_LOOP if model.startswith(USER_LOOP + ":") else "keras"


class KerasLearner:
    """The built-in MLP or a user's Keras builder, under MultiWorkerMirroredStrategy."""

    snapshot_file = "{}.npz"

    def __init__(self, config: dict[str, Any]) -> None:
        from ray_jobs.worker import setup_worker

        self.config = config
        self.model, self._make_input, self.steps_per_epoch, self.x_val, self.y_val = setup_worker(
            config
        )

    def fit_epoch(self, epoch: int) -> float | None:
        """Train one epoch; the training-set accuracy Keras measured (classification)."""
        # One pass over the shard per call: the input is built anew, so Ray Data starts the
        # worker's next epoch of its shard.
        hist = self.model.fit(
            self._make_input(),
            epochs=epoch + 1,
            initial_epoch=epoch,
            steps_per_epoch=self.steps_per_epoch,
            verbose=0,
        ).history
        return float(hist["accuracy"][-1]) if "accuracy" in hist else None

    def predict_val(self) -> np.ndarray:
        return np.asarray(self.model(self.x_val, training=False).numpy())

    def validate(self) -> tuple[float, float | None]:
        """(score of the target metric, loss) on the validation rows."""
        from ray_jobs.worker import validation_scores

        return validation_scores(self.config, self.predict_val(), self.y_val)

    def close(self) -> None:
        pass

    def snapshot(self) -> Any:
        return self.model.get_weights()

    def restore(self, snapshot: Any) -> None:
        self.model.set_weights(snapshot)


class XGBoostLearner:
    """XGBoost's own trainer (``xgboost.train``) on this worker's shard; with several workers
    Ray Train's XGBoost backend joins them in one collective, so the trees are the same on
    every worker."""

    snapshot_file = "{}.ubj"

    def __init__(self, config: dict[str, Any]) -> None:
        import ray.train
        import xgboost as xgb

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        self.config = config
        profile = config["profile"]
        self.x_val, self.y_val = data_io.read_xy_head(config["val_path"], profile)
        self._xgb = xgb
        # XGBoost's own iterator input: the shard's chunks go through a DataIter into a
        # QuantileDMatrix, which keeps the binned matrix (a byte per cell), not the floats.
        rows = _shard_iter(xgb, data_io.ShardStream(config, rank, world))
        self._dtrain = xgb.QuantileDMatrix(
            rows, max_bin=int((config.get("model_params") or {}).get("max_bin", 256))
        )
        rows.release()
        self._dval = xgb.DMatrix(self.x_val)
        if rank == 0:
            # Ray Train's XGBoost backend wraps this loop in XGBoost's collective: several
            # workers build one model from all shards (the histograms are all-reduced).
            print(
                f"[slaflow] xgboost collective of {xgb.collective.get_world_size()} worker(s), "
                f"{rows.rows} rows on this one",
                flush=True,
            )
        self.params = xgboost_params(config)
        user = dict(config.get("model_params") or {})
        self.rounds = int(user.get("rounds_per_epoch", DEFAULT_ROUNDS_PER_EPOCH))
        self.steps_per_epoch = self.rounds
        self.booster: Any = None
        self.task = profile.get("task", "classification")

    def fit_epoch(self, epoch: int) -> float | None:
        self.booster = self._xgb.train(
            self.params, self._dtrain, num_boost_round=self.rounds, xgb_model=self.booster
        )
        return None

    def predict_val(self) -> np.ndarray:
        return xgb_output(self.booster.predict(self._dval), self.task)

    def validate(self) -> tuple[float, float | None]:
        from ray_jobs.worker import validation_scores

        return validation_scores(self.config, self.predict_val(), self.y_val)

    def close(self) -> None:
        pass

    def snapshot(self) -> Any:
        return None if self.booster is None else bytes(self.booster.save_raw("ubj"))

    def restore(self, snapshot: Any) -> None:
        self.booster = (
            None if snapshot is None else self._xgb.Booster(model_file=bytearray(snapshot))
        )


def _shard_iter_class(xgb: Any) -> type:
    class ShardIter(xgb.DataIter):  # type: ignore[misc,name-defined]
        """XGBoost iterates its input more than once (quantiles, then the binned matrix) and
        expects the same rows in the same order each time; a Ray Data epoch need not give
        them (blocks are shared out to workers as they ask, and chunks are shuffled). So one
        pass is read from the shard and replayed for the others, then let go: the floats live
        only while the QuantileDMatrix is built."""

        def __init__(self, stream: data_io.ShardStream) -> None:
            self._stream = stream
            self._seen: list[tuple[np.ndarray, np.ndarray]] = []
            self._replay: list[tuple[np.ndarray, np.ndarray]] | None = None
            self._chunks: Any = None
            self.rows = 0
            super().__init__()

        def next(self, input_data: Any) -> bool:
            if self._replay is not None:
                if not self._replay:
                    return False
                x, y = self._replay.pop(0)
            else:
                if self._chunks is None:
                    self._chunks = self._stream.chunks()
                try:
                    x, y = next(self._chunks)
                except StopIteration:
                    return False
                self._seen.append((x, y))
            input_data(data=x, label=y)
            return True

        def reset(self) -> None:
            if self._chunks is not None or self._replay is not None:
                self._replay = list(self._seen)
            self._chunks = None

        def release(self) -> None:
            self.rows = sum(len(y) for _, y in self._seen)
            self._seen, self._replay = [], None

    return ShardIter


def _shard_iter(xgb: Any, stream: data_io.ShardStream) -> Any:
    """One pass over a worker's shard per DataIter pass (XGBoost is imported lazily)."""
    return _shard_iter_class(xgb)(stream)


def make_learner(config: dict[str, Any]) -> Any:
    """The learner of the spec's framework (all three share fit_epoch, validate, snapshot,
    restore, close and steps_per_epoch)."""
    kind = framework(config)
    if kind == XGBOOST:
        return XGBoostLearner(config)
    if kind == USER_LOOP:
        from ray_jobs.user_loop import UserLoopLearner

        return UserLoopLearner(config)
    return KerasLearner(config)


#: ``model_params`` keys handed to XGBoost as they are (the others are slaflow's).
XGBOOST_PARAMS = (
    "max_depth",
    "eta",
    "min_child_weight",
    "subsample",
    "colsample_bytree",
    "lambda",
    "alpha",
    "gamma",
    "max_bin",
    "tree_method",
)


def xgboost_params(config: dict[str, Any]) -> dict[str, Any]:
    """XGBoost's parameters: the objective from the task, ``eta`` from the contract's
    learning_rate unless ``model_params`` sets it, one thread per CPU the worker holds."""
    profile = config["profile"]
    user = dict(config.get("model_params") or {})
    n_classes = len(profile.get("classes") or [])
    params: dict[str, Any] = {
        "tree_method": "hist",
        "eta": float(config.get("learning_rate", 0.3)),
        "max_depth": 6,
        "seed": int(config.get("seed", 0)),
        "nthread": max(1, int(float(config.get("cpus_per_worker", 1)))),
    }
    if profile.get("task") == "regression":
        params["objective"] = "reg:squarederror"
    elif n_classes == 2:
        params["objective"] = "binary:logistic"
    else:
        params.update(objective="multi:softprob", num_class=n_classes)
    params.update({k: v for k, v in user.items() if k in XGBOOST_PARAMS})
    return params


def xgb_output(raw: np.ndarray, task: str) -> np.ndarray:
    """XGBoost's predictions in slaflow's shape: class probabilities ``[n, classes]``, or
    values ``[n, 1]``."""
    raw = np.asarray(raw, dtype="float32")
    if task == "regression":
        return raw.reshape(-1, 1)
    if raw.ndim == 1:  # binary:logistic gives P(class 1)
        return np.stack([1.0 - raw, raw], axis=1)
    return raw


def save_snapshot(config: dict[str, Any], snapshot: Any, folder: Path, name: str) -> None:
    """A snapshot to ``folder`` (a checkpoint), in the framework's own format."""
    if framework(config) == USER_LOOP:
        from ray_jobs import user_loop

        user_loop.save_snapshot(snapshot, folder / name)
    elif framework(config) == XGBOOST:
        (folder / f"{name}.ubj").write_bytes(b"" if snapshot is None else snapshot)
    else:
        np.savez(folder / f"{name}.npz", *snapshot)


def load_snapshot(config: dict[str, Any], folder: Path, name: str) -> Any:
    """A snapshot from a checkpoint folder (no TensorFlow or XGBoost import needed)."""
    if framework(config) == USER_LOOP:
        from ray_jobs import user_loop

        return user_loop.load_snapshot(folder / name)
    if framework(config) == XGBOOST:
        raw = (folder / f"{name}.ubj").read_bytes()
        return raw or None
    with np.load(folder / f"{name}.npz") as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def trainer_for(
    spec: dict[str, Any],
    train_loop_per_worker: Any,
    *,
    train_loop_config: dict[str, Any],
    scaling_config: Any,
    run_config: Any,
) -> Any:
    """The Ray Train trainer of the spec's framework: the tf-keras backend
    (``ray_jobs.tf_backend``), Ray Train's XGBoost trainer (its collective for several
    workers) or, for a user's loop, the plain data-parallel trainer; fed the training split
    by Ray Data (one streamed shard per worker), or, for a split under
    ``ray_data_min_bytes``, by each worker reading its share of the files
    (``data_io.feed_of``)."""
    kind = framework(spec)
    if kind == USER_LOOP:
        # A plain data-parallel trainer: the user's loop sets up its own framework.
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer as trainer
    elif kind == XGBOOST:
        from ray.train.xgboost import XGBoostTrainer as trainer
    else:
        from ray_jobs.tf_backend import tf_trainer as trainer
    feed = data_io.feed_of(spec, user_loop=kind == USER_LOOP)
    print(f"[slaflow] the training split is fed to the workers by {feed}", flush=True)
    return trainer(
        train_loop_per_worker,
        train_loop_config={**train_loop_config, "feed": feed},
        scaling_config=scaling_config,
        run_config=run_config,
        datasets=data_io.training_datasets(spec) if feed == data_io.FEED_RAY_DATA else None,
    )
