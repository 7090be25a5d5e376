"""A user's own Ray Train loop (``train_loop_per_worker``) under slaflow's per-epoch control.

The contract names it as ``"model": "train_loop:package.module:function"``. The function is
an ordinary Ray Train loop: it reads ``ray.train.get_checkpoint()`` to resume, trains, and
calls ``ray.train.report(metrics, checkpoint=...)`` once per epoch (or per block of boosting
rounds) with the validation value of the contract's ``target_metric`` among the metrics
(``{"accuracy": 0.93}``, or ``{"val_rmse": 41.2}``). Any framework runs this way.

slaflow runs the loop in a thread of the Ray Train worker and turns it inside out
(:class:`UserLoopLearner`): each ``ray.train.report`` the loop makes hands its metrics and
checkpoint to slaflow's epoch loop (``ray_jobs.train``) and waits there while the deadline
controller and the quality early stop decide. *Continue* returns from ``report``; *stop* or
*resize* ends the loop (a ``BaseException`` raised out of ``report``, so the user's
``except Exception`` cannot swallow it). The loop's checkpoints become slaflow's (latest and
best, with the controller state), so a resize or an Airflow retry resumes the user's loop from
its own checkpoint through ``ray.train.get_checkpoint()``.

Serving: the module also defines ``load_predictor(checkpoint_dir, input_spec)``, returning a
function from the encoded features (float32 ``[n, input_spec["width"]]``) to class
probabilities ``[n, classes]`` or values ``[n]``. The best checkpoint is logged as an MLflow
pyfunc model (``ray_jobs.pyfunc``); the router, tiers, autoscaler and canary serve it like any
other model. ``PIP_REQUIREMENTS`` (a list), if the module defines it, goes into the pyfunc
model's requirements.
"""

from __future__ import annotations

import json
import queue
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ray_jobs.model_format import METADATA_FILE, ModelMetadata, UserModelError, load_builder
from ray_jobs.model_format import input_spec as keras_input_spec

PREFIX = "train_loop:"
CHECKPOINT_DIR = "checkpoint"
INPUT_SPEC_FILE = "input_spec.json"
PREDICTOR_FUNCTION = "load_predictor"


def is_user_loop(model: str) -> bool:
    return model.startswith(PREFIX)


def loop_target(model: str) -> str:
    """``package.module:function`` of a ``train_loop:...`` model."""
    return model[len(PREFIX) :]


def predictor_target(model: str) -> str:
    """``package.module:load_predictor`` beside the loop."""
    return loop_target(model).partition(":")[0] + ":" + PREDICTOR_FUNCTION


class LoopReturned(Exception):  # noqa: N818 - an event, not an error
    """The user's loop returned before slaflow stopped it (it ran out of its own epochs)."""


class _Stop(BaseException):
    """Raised out of ``ray.train.report`` in the user's thread to end its loop."""


class LoopSnapshot:
    """A copy of one checkpoint the user's loop reported, in a folder of its own that is
    removed when the last reference goes (the epoch loop keeps the best one, the learner the
    latest; the others go as the loop moves on)."""

    def __init__(self, path: str) -> None:
        self.path = path
        weakref.finalize(self, shutil.rmtree, path, True)

    @classmethod
    def copy_of(cls, source: str | Path) -> LoopSnapshot:
        dest = tempfile.mkdtemp(prefix="slaflow-loop-")
        shutil.copytree(source, dest, dirs_exist_ok=True)
        return cls(dest)

    def save(self, folder: Path) -> None:
        shutil.copytree(self.path, folder, dirs_exist_ok=True)


def save_snapshot(snapshot: LoopSnapshot | None, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if snapshot is not None:
        snapshot.save(folder)


def load_snapshot(folder: Path) -> LoopSnapshot | None:
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    return LoopSnapshot.copy_of(folder)


def input_spec(profile: dict[str, Any]) -> dict[str, Any]:
    """What the user's loop and predictor are told about the data: the Keras builders'
    ``input_spec`` plus the features' training statistics (for scaling)."""
    return {
        **keras_input_spec(profile),
        "feature_mean": [float(v) for v in profile["feature_mean"]],
        "feature_std": [float(v) for v in profile["feature_std"]],
    }


class LoopData:
    """This worker's data, encoded as the endpoint encodes requests (categories one-hot,
    names resolved), so what the loop trains on is what serving feeds ``load_predictor``'s
    function: ``epoch(batch_size)`` streams one pass over the worker's shard of the training
    split (Ray Data), ``validation()`` gives the validation rows. ``ray.train.get_dataset_shard
    ("train")`` is there too, for loops that want the raw prepared columns."""

    def __init__(self, config: dict[str, Any], rank: int, world: int) -> None:
        from ray_jobs import data_io

        self._config = config
        self._stream = data_io.ShardStream(config, rank, world)
        self.rows = self._stream.rows
        self._val: tuple[np.ndarray, np.ndarray] | None = None

    def epoch(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One pass: ``rows // batch_size`` batches ``(x float32 [b, width], y)``; ``y`` is
        the class index (int32) or the value (float32)."""
        return self._stream.batches(int(batch_size), max(1, self.rows // int(batch_size)))

    def validation(self) -> tuple[np.ndarray, np.ndarray]:
        from ray_jobs import data_io

        if self._val is None:
            self._val = data_io.read_xy_head(self._config["val_path"], self._config["profile"])
        return self._val


def _install_hooks() -> None:
    """Route ``ray.train.report`` and ``ray.train.get_checkpoint`` through the learner of the
    calling thread (the user's loop); every other caller gets Ray's own."""
    import ray.train

    if getattr(ray.train.report, "_slaflow", False):
        return
    real_report, real_get_checkpoint = ray.train.report, ray.train.get_checkpoint

    def report(metrics: dict[str, Any], checkpoint: Any = None, **kwargs: Any) -> None:
        learner = _LEARNERS.get(threading.get_ident())
        if learner is None:
            real_report(metrics, checkpoint=checkpoint, **kwargs)
        else:
            learner._on_report(metrics, checkpoint)

    def get_checkpoint() -> Any:
        learner = _LEARNERS.get(threading.get_ident())
        return real_get_checkpoint() if learner is None else learner._user_checkpoint()

    report._slaflow = True  # type: ignore[attr-defined]
    ray.train.report, ray.train.get_checkpoint = report, get_checkpoint


#: The learner whose user loop runs in each thread.
_LEARNERS: dict[int, UserLoopLearner] = {}


class UserLoopLearner:
    """The user's loop as a learner (``ray_jobs.learners``): ``fit_epoch`` lets the loop run
    to its next ``report``; ``validate`` reads the target metric from what it reported;
    ``snapshot`` is the checkpoint it reported; ``restore`` is what its next
    ``get_checkpoint()`` gives. ``close`` ends the loop."""

    def __init__(self, config: dict[str, Any]) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self._rank, world = ctx.get_world_rank(), ctx.get_world_size()
        self._model = str(config["model"])
        self._target = loop_target(self._model)
        self._metric = str(config.get("target_metric", "accuracy"))
        _install_hooks()  # before the user's module is imported
        self._fn: Callable[[dict[str, Any]], Any] = load_builder(self._target)
        self._config = {
            **dict(config.get("model_params") or {}),
            "learning_rate": float(config["learning_rate"]),
            "batch_size": int(config["batch_size"]),
            "max_epochs": int(config["max_epochs"]),
            "seed": int(config.get("seed", 0)),
            "target_metric": self._metric,
            "input_spec": input_spec(config["profile"]),
            "data": LoopData(config, self._rank, world),
        }
        self.steps_per_epoch = 1
        self._restore: LoopSnapshot | None = None
        self._latest: LoopSnapshot | None = None
        self._metrics: dict[str, Any] = {}
        self._to_loop: queue.Queue[str] = queue.Queue()
        self._from_loop: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._reports = 0

    # --- the user's thread -------------------------------------------------------------
    def _run(self) -> None:
        _LEARNERS[threading.get_ident()] = self
        try:
            self._fn(self._config)
            self._from_loop.put(("returned", None))
        except _Stop:
            self._from_loop.put(("stopped", None))
        except BaseException as exc:  # handed to the epoch loop, which raises it
            self._from_loop.put(("error", exc))
        finally:
            _LEARNERS.pop(threading.get_ident(), None)

    def _on_report(self, metrics: dict[str, Any], checkpoint: Any) -> None:
        snapshot = None
        if checkpoint is not None and self._rank == 0:  # rank 0's checkpoint is the model
            with checkpoint.as_directory() as d:
                snapshot = LoopSnapshot.copy_of(d)
        self._from_loop.put(("report", (dict(metrics), snapshot)))
        if self._to_loop.get() == "stop":
            raise _Stop()

    def _user_checkpoint(self) -> Any:
        import ray.train

        snap = self._restore
        return None if snap is None else ray.train.Checkpoint.from_directory(snap.path)

    # --- slaflow's epoch loop ------------------------------------------------------------
    def fit_epoch(self, epoch: int) -> float | None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="user-train-loop", daemon=True)
            self._thread.start()
        else:
            self._to_loop.put("go")
        kind, payload = self._from_loop.get()
        if kind == "report":
            metrics, snapshot = payload
            self._reports += 1
            self._metrics = metrics
            if snapshot is not None:
                self._latest = snapshot
            train = metrics.get("train_accuracy")
            return None if train is None else float(train)
        self._thread.join()
        if kind == "returned":
            if self._reports == 0:
                raise UserModelError(
                    f"train loop {self._target}(config) returned without calling "
                    f"ray.train.report: report the validation {self._metric} once per epoch"
                )
            raise LoopReturned()
        exc = payload
        raise UserModelError(
            f"train loop {self._target}(config) raised {type(exc).__name__}: {exc} "
            f"(after {self._reports} report(s))"
        ) from exc

    def validate(self) -> tuple[float, float | None]:
        """(score of the target metric, the loss if reported) from the last report."""
        from policies import metric

        m = self._metrics
        value = m.get(self._metric, m.get(f"val_{self._metric}"))
        if value is None:
            raise UserModelError(
                f"train loop {self._target} reported {sorted(m)} without {self._metric!r} "
                f"(the contract's target_metric): report its validation value each epoch, "
                f"e.g. ray.train.report({{'{self._metric}': ...}}, checkpoint=...)"
            )
        loss = m.get("val_loss", m.get("loss"))
        return metric(self._metric).score(float(value)), None if loss is None else float(loss)

    def snapshot(self) -> LoopSnapshot | None:
        return self._latest

    def restore(self, snapshot: LoopSnapshot | None) -> None:
        self._restore = self._latest = snapshot

    def close(self) -> None:
        """End the user's loop (it waits in ``report``) and its thread."""
        if self._thread is not None and self._thread.is_alive():
            self._to_loop.put("stop")
            self._from_loop.get()
            self._thread.join()


def export_loop_model(
    snapshot: LoopSnapshot | None, metadata: Any, profile: dict[str, Any], out_dir: Path
) -> Path:
    """The best checkpoint and what ``load_predictor`` is told, beside the metadata."""
    if snapshot is None:
        raise RuntimeError(
            f"train loop {loop_target(metadata.model)} reported no checkpoint: pass "
            f"checkpoint=ray.train.Checkpoint.from_directory(...) to ray.train.report"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    snapshot.save(out_dir / CHECKPOINT_DIR)
    (out_dir / INPUT_SPEC_FILE).write_text(json.dumps(input_spec(profile)))
    (out_dir / METADATA_FILE).write_text(metadata.to_json())
    return out_dir


def pip_requirements(model: str) -> list[str]:
    """``PIP_REQUIREMENTS`` of the user's module, if it declares them."""
    import importlib

    module = importlib.import_module(loop_target(model).partition(":")[0])
    return [str(r) for r in getattr(module, "PIP_REQUIREMENTS", [])]


class LoopPredictor:
    """The user's ``load_predictor`` over an exported checkpoint, with the interface of
    ``model_format.Predictor``."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        self.metadata = ModelMetadata.from_json((model_dir / METADATA_FILE).read_text())
        self._checkpoint = model_dir / CHECKPOINT_DIR
        self._target = predictor_target(self.metadata.model)
        spec = json.loads((model_dir / INPUT_SPEC_FILE).read_text())
        load = load_builder(self._target)
        try:
            self._fn = load(str(self._checkpoint), spec)
        except Exception as exc:
            raise UserModelError(
                f"{self._target}(checkpoint_dir, input_spec) raised {type(exc).__name__}: {exc}"
            ) from exc
        self._outputs = int(spec["outputs"])
        self.variables: list[Any] = []

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        out = np.asarray(self._fn(np.asarray(features, dtype="float32")), dtype="float32")
        n = len(features)
        if self.metadata.regression:
            return out.reshape(n, 1)
        if out.shape != (n, self._outputs):
            raise UserModelError(
                f"the predictor from {self._target} answered shape {out.shape} for {n} rows; "
                f"a classifier answers class probabilities [{n}, {self._outputs}]"
            )
        return out

    def predict_classes(self, features: np.ndarray) -> np.ndarray:
        return np.argmax(self.predict_proba(features), axis=1)

    def parameter_count(self) -> int:
        """The checkpoint's bytes / 4 (as float32 weights): the serving-cost proxy of a model
        slaflow cannot look into."""
        size = sum(p.stat().st_size for p in self._checkpoint.rglob("*") if p.is_file())
        return int(size // 4)

    def signature(self) -> str:
        return (
            f"train_loop|{loop_target(self.metadata.model)}|features={self.metadata.n_features}|"
            f"outputs={max(1, len(self.metadata.classes))}|params~{self.parameter_count()}"
        )
