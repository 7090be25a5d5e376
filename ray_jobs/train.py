"""Ray Train job: a Keras MLP trained data-parallel with Ray Train (``ray_jobs.tf_backend``).

Runs as a Ray Job (``python -m ray_jobs.train``), submitted by ``TrainModelOperator``.
Every epoch: per-epoch metrics to MLflow from rank 0, a progress line in the log, and the
deadline/accuracy decision of ``policies.after_epoch`` broadcast from rank 0 so all workers
stop together; a checkpoint (latest and best weights + state) when ``policies.checkpoint_due``
says so (every 10 s, and always before a resize or the end).
A resubmitted job (Airflow retry, or a failed driver) resumes from the newest checkpoint in
its storage folder, so no finished epoch is lost.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from policies import StopReason, deadline_met
from ray_jobs.entry import run_entrypoint
from ray_jobs.export import export_and_log
from ray_jobs.learners import load_snapshot, make_learner, save_snapshot
from ray_jobs.user_loop import LoopReturned

STATE_FILE = "state.json"
#: Written last into every checkpoint: each file's size and SHA-256. A checkpoint whose files
#: do not match it (cut off mid-write, truncated on its disk) is skipped on resume.
MANIFEST_FILE = "slaflow_manifest.json"
LATEST = "latest"
BEST = "best"


def _cluster_cap(config: dict[str, Any], world: int) -> int:
    """Workers the budget and the cluster allow now (this job's own workers count as free):
    ``policies.cluster_capacity`` of the run's shape, so GPUs count where the plan chose
    the ``gpu`` shape (one GPU per worker)."""
    import ray

    from policies import cluster_capacity

    cpw = float(config["cpus_per_worker"])
    shape = config.get("throughput", {}).get("shape", "cpu")
    free = ray.available_resources()
    fit = cluster_capacity(
        free_cpus=float(free.get("CPU", 0.0)) + world * cpw,
        cpus_per_worker=cpw,
        free_gpus=float(free.get("GPU", 0.0)) + (world if shape == "gpu" else 0),
    )
    return max(1, min(int(config["max_workers"]), fit.get(shape, fit["cpu"])))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    from policies import (
        Action,
        ControllerState,
        EpochRecord,
        ThroughputModel,
        after_epoch,
        checkpoint_due,
    )

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    learner = make_learner(config)

    state: dict[str, Any] = {
        "epoch": 0,
        "history": [],
        # Scores of any metric (rmse's is 1 - rmse, far below 0): no sentinel value is safe.
        "best_val_accuracy": None,
        "best_epoch": 0,
        "durations": [],
        "records": [],
        "controller": None,
        "segments": [],
    }
    best_weights = learner.snapshot()
    # Ray Train's own restore (a worker failure inside this fit) comes first; otherwise the
    # checkpoint the driver names (a resize segment, or a resubmitted job). Ray Train V2 has
    # no resume_from_checkpoint: the path travels in the config.
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("resume_from"):
        checkpoint = ray.train.Checkpoint(config["resume_from"])
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = {**state, **json.loads((Path(d) / STATE_FILE).read_text())}
            learner.restore(load_snapshot(config, Path(d), LATEST))
            best_weights = load_snapshot(config, Path(d), BEST)
        if rank == 0:
            print(
                f"[slaflow] resumed from checkpoint at epoch {state['epoch']} on {world} workers",
                flush=True,
            )
    state["resize_to"] = None
    throughput = ThroughputModel(
        config["throughput"]["shape"],
        {int(k): float(v) for k, v in config["throughput"]["epoch_s"].items()},
        float(config["throughput"]["startup_s"]),
    )
    segment_first = True

    metrics_out = None  # rank 0's epoch metrics, written off the training path
    if rank == 0 and config.get("mlflow_run_id"):
        from mlflow.tracking import MlflowClient

        from ray_jobs.metrics_buffer import MetricsBuffer

        metrics_out = MetricsBuffer(MlflowClient(config["tracking_uri"]), config["mlflow_run_id"])

    started_at = float(config["started_at"])
    if rank == 0 and state["segments"] and state["segments"][-1].get("resumed_at") is None:
        state["segments"][-1]["resumed_at"] = time.time() - started_at
    run_next = True
    last_checkpoint_s: float | None = None
    while run_next:
        epoch_start = time.time()
        try:
            train_accuracy = learner.fit_epoch(state["epoch"])
        except LoopReturned:
            # A user's loop that ran out of its own epochs: training ends at its last report.
            state["stop_reason"] = StopReason.MAX_EPOCHS.value
            if rank == 0:
                print(
                    f"[slaflow] the train loop returned after epoch {state['epoch']}: "
                    f"training ends there",
                    flush=True,
                )
                _export_on_stop(config, state, best_weights, started_at)
                _save_and_report(config, learner.snapshot(), best_weights, state, {})
            else:
                ray.train.report({})
            break
        fit_s = time.time() - epoch_start
        val_acc, val_loss = learner.validate()
        state["epoch"] += 1
        duration = time.time() - epoch_start
        state["durations"].append(duration)
        state["records"].append(
            {
                "epoch": state["epoch"],
                "workers": world,
                "duration_s": duration,
                "val_accuracy": val_acc,
                "first_of_segment": segment_first,
            }
        )
        segment_first = False
        now_s = time.time() - started_at
        row = {
            "epoch": state["epoch"],
            # Training accuracy where the framework measures it; the validation column holds
            # the target metric's score (policies.Metric.score: the metric itself for accuracy).
            "accuracy": val_acc if train_accuracy is None else train_accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "workers": world,
            "elapsed_s": now_s,
            "epoch_seconds": duration,
            # The pass over the shard alone; the rest of the epoch (validation, decision,
            # logging, checkpoint) is slaflow's control overhead, in ``overhead_s``.
            "fit_seconds": fit_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "anon_rss_mb": anon_rss_mb(),
        }
        if state["best_val_accuracy"] is None or val_acc > state["best_val_accuracy"]:
            state["best_val_accuracy"], state["best_epoch"] = val_acc, state["epoch"]
            best_weights = learner.snapshot()

        # The decision is taken on rank 0 (one clock) and broadcast, so no worker is left
        # waiting in a collective that the others skipped.
        local = None
        if rank == 0:
            cap = _cluster_cap(config, world) if config["resize_policy"] == "deadline" else world
            plan = after_epoch(
                now_s=now_s,
                deadline_s=float(config["deadline_s"]),
                records=[EpochRecord(**r) for r in state["records"]],
                max_epochs=int(config["max_epochs"]),
                stop_accuracy=float(config["stop_accuracy"]),
                workers=world,
                max_workers=cap,
                model=throughput,
                state=ControllerState.from_dict(state["controller"]),
                prior_epochs=int(config["prior_epochs"]),
                resize=config["resize_policy"] == "deadline",
                stop_when_unreachable=config["on_target_unreachable"] == "stop",
            )
            local = plan.to_dict() | {"controller_state": plan.state.to_dict()}
        decision = broadcast_from_rank_zero(local)
        run_next = decision["action"] == Action.CONTINUE.value
        state["stop_reason"] = decision["stop_reason"]
        if decision["action"] == Action.RESIZE.value:
            state["resize_to"] = int(decision["workers"])
        control = decision.get("control") or {}
        row.update(
            {
                "epochs_planned": decision["epochs_planned"],
                "setpoint": control.get("setpoint"),
                "progress": control.get("progress"),
            }
        )
        state["history"].append(row)

        metrics = {
            **row,
            "best_val_accuracy": state["best_val_accuracy"],
            "action": decision["action"],
        }
        if rank == 0:
            state["controller"] = decision["controller_state"]
            eta = decision["eta_s"]
            print(
                f"[slaflow] epoch {state['epoch']}/{config['max_epochs']} "
                f"val_acc={val_acc:.4f} target={config['stop_accuracy']:.4f} "
                f"elapsed={now_s:.1f}s eta={'-' if eta is None else f'{eta:.0f}s'} "
                f"deadline={config['deadline_s']:g}s workers={world} "
                f"planned_epochs={decision['epochs_planned']} -> {decision['action']}"
                f"{' to ' + str(decision['workers']) + ' workers' if state['resize_to'] else ''}"
                f": {decision['detail']}",
                flush=True,
            )
            if state["resize_to"]:
                state["segments"].append(
                    {"at_s": now_s, "from": world, "to": state["resize_to"], "resumed_at": None}
                )
            if metrics_out is not None:
                metrics_out.log(_epoch_metrics(row))
            if not run_next and not state["resize_to"]:
                # Training is over: export here, where TensorFlow is loaded, so the driver
                # never imports it (seconds saved on every run). The epochs' metrics first.
                _flush_metrics(metrics_out)
                _export_on_stop(config, state, best_weights, started_at)
            if checkpoint_due(
                now_s=now_s, last_checkpoint_s=last_checkpoint_s, action=decision["action"]
            ):
                last_checkpoint_s = now_s
                _save_and_report(config, learner.snapshot(), best_weights, state, metrics)
            else:
                ray.train.report(metrics)
        else:
            ray.train.report(metrics)
        state.setdefault("overhead_s", []).append(time.time() - epoch_start - fit_s)
        if state["resize_to"]:
            break
    _flush_metrics(metrics_out)  # the worker exits after this segment: nothing left behind
    learner.close()


#: How long a worker waits for its tracking server to take the buffered epoch metrics.
METRICS_FLUSH_S = 600.0


def _flush_metrics(buffer: Any) -> None:
    if buffer is not None and not buffer.flush(METRICS_FLUSH_S):
        raise RuntimeError(
            f"MLflow took none of the last {buffer.pending()} epochs' metrics in "
            f"{METRICS_FLUSH_S:g} s: is the tracking server up? (a retry resumes from the "
            f"last checkpoint)"
        )


def _export_on_stop(
    config: dict[str, Any], state: dict[str, Any], best: Any, started_at: float
) -> None:
    """Rank 0, when training is over: the best model exported and logged to MLflow."""
    state["training_seconds"] = time.time() - started_at
    state["summary"] = training_summary(state, float(config["stop_accuracy"]))
    state["model_uri"] = export_and_log(
        config, best, state, state["training_seconds"], state["summary"]
    )


def _save_and_report(
    config: dict[str, Any], latest: Any, best: Any, state: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """Rank 0: a checkpoint (latest and best model, the loop's state) reported with metrics."""
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        save_snapshot(config, latest, Path(d), LATEST)
        save_snapshot(config, best, Path(d), BEST)
        (Path(d) / STATE_FILE).write_text(json.dumps(state))
        write_manifest(Path(d))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _files_of(folder: Path) -> dict[str, dict[str, Any]]:
    import hashlib

    out: dict[str, dict[str, Any]] = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != MANIFEST_FILE:
            out[f.relative_to(folder).as_posix()] = {
                "bytes": f.stat().st_size,
                "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
            }
    return out


def write_manifest(folder: Path) -> None:
    """Each file of a checkpoint folder with its size and digest, written last."""
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": _files_of(folder)}))


def checkpoint_damage(fs: Any, path: str) -> str | None:
    """What is wrong with the checkpoint at ``path`` on ``fs`` (a pyarrow filesystem), or None:
    a file of its manifest missing, of another size or another digest. A checkpoint written
    before manifests were is taken as it is."""
    import hashlib

    try:
        with fs.open_input_stream(f"{path}/{MANIFEST_FILE}") as fh:
            files = json.loads(fh.read())["files"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:
        return f"its manifest is unreadable ({exc})"
    for rel, want in files.items():
        try:
            with fs.open_input_stream(f"{path}/{rel}") as fh:
                data = fh.read()
        except (FileNotFoundError, OSError):
            return f"{rel} is missing"
        if len(data) != want["bytes"]:
            return f"{rel} has {len(data)} bytes, {want['bytes']} were written"
        if hashlib.sha256(data).hexdigest() != want["sha256"]:
            return f"{rel} changed since it was written (SHA-256 differs)"
    return None


def anon_rss_mb() -> float | None:
    """This process's private memory now (``RssAnon``): unlike the peak RSS, it leaves out the
    object store's shared pages a worker maps when it reads Ray Data blocks."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _epoch_metrics(row: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    keys = (
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "workers",
        "elapsed_s",
        "epoch_seconds",
        "fit_seconds",
        "peak_rss_mb",
        "anon_rss_mb",
        "epochs_planned",
        "setpoint",
        "progress",
    )
    return [Metric(k, float(row[k]), ts, row["epoch"]) for k in keys if row.get(k) is not None]


def latest_checkpoint_path(storage_path: str, run_name: str) -> str | None:
    """Newest checkpoint folder (by trained epochs) a previous attempt of this run left."""
    import pyarrow.fs as pafs

    fs, root = (
        pafs.FileSystem.from_uri(storage_path)
        if "://" in storage_path
        else (pafs.LocalFileSystem(), storage_path)
    )
    base = f"{root.rstrip('/')}/{run_name}"
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=False))
    except (FileNotFoundError, OSError):
        return None
    found: list[tuple[int, str]] = []
    for info in infos:
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{STATE_FILE}") as fh:
                epoch = int(json.loads(fh.read())["epoch"])
        except (FileNotFoundError, OSError, ValueError, KeyError):
            continue  # a checkpoint cut off mid-write is skipped, not trusted
        found.append((epoch, info.path))
    for epoch, path in sorted(found, reverse=True):
        damage = checkpoint_damage(fs, path)
        if damage is not None:
            print(
                f"[slaflow] checkpoint {path} (epoch {epoch}) is damaged: {damage}; "
                f"resuming from an earlier one",
                flush=True,
            )
            continue
        return path if "://" not in storage_path else storage_path.split("://")[0] + "://" + path
    return None


def run_training(spec: dict[str, Any]) -> dict[str, Any]:
    """Driver side: fit with Ray Train, then export the best weights and log the model."""
    from ray_jobs.worker import check_inputs

    check_inputs(spec)
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from ray_jobs.learners import trainer_for

    ray.init(runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1"}})
    resume = latest_checkpoint_path(spec["storage_path"], spec["run_name"])
    workers = int(spec["num_workers"])
    if resume:
        previous = _checkpoint_state(resume)
        if previous.get("stop_reason"):
            # A previous attempt finished training and died later (e.g. logging the model).
            print(
                f"[slaflow] run {spec['run_name']} already trained; exporting {resume}", flush=True
            )
            return _finish(spec, resume, resume)
        last = previous["records"][-1]["workers"] if previous.get("records") else workers
        workers = int(previous.get("resize_to") or last)
        print(
            f"[slaflow] resuming run {spec['run_name']} from {resume} on {workers} workers",
            flush=True,
        )
    first_resume = resume
    # The plan picked the shape by measured throughput per price; CPU unless GPUs won.
    gpu = spec.get("throughput", {}).get("shape") == "gpu"
    # One Ray Train run per segment: the controller ends a segment with a checkpoint and the
    # worker count for the next one; the next segment resumes from that checkpoint.
    while True:
        trainer = trainer_for(
            spec,
            train_loop_per_worker,
            train_loop_config={**spec, "resume_from": resume},
            scaling_config=ScalingConfig(
                num_workers=workers,
                use_gpu=gpu,
                resources_per_worker={"CPU": spec["cpus_per_worker"]} | ({"GPU": 1} if gpu else {}),
            ),
            run_config=RunConfig(
                name=spec["run_name"],
                storage_path=spec["storage_path"],
                # Worker failures retried from the last checkpoint (a lost node, a killed
                # worker); a user's loop that always fails costs this many more tries.
                failure_config=FailureConfig(max_failures=int(spec.get("max_failures", 2))),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                worker_runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1"}},
            ),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"training reported no checkpoint: {result.error}")
        resume = result.checkpoint.path
        state = _checkpoint_state(resume)
        if not state.get("resize_to"):
            break
        print(
            f"[slaflow] resizing: {workers} -> {state['resize_to']} workers at epoch "
            f"{state['epoch']} (checkpoint {resume})",
            flush=True,
        )
        workers = int(state["resize_to"])
    return {**_finish(spec, resume, first_resume), "worker_nodes": _worker_nodes()}


def _worker_nodes() -> list[dict[str, str]]:
    """Where this job's Ray Train workers ran (from Ray's state API), for the record."""
    import ray
    from ray.util.state import list_actors

    job_id = ray.get_runtime_context().get_job_id()
    ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    # The address is explicit: without it the state API refuses when a machine runs two Ray
    # clusters ("Found multiple active Ray instances").
    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", "RayTrainWorker")],
        detail=True,
        limit=1000,
        raise_on_missing_output=False,
    )
    return sorted(
        (
            {"node_id": a.node_id, "ip": ips.get(a.node_id, "?")}
            for a in actors
            if a.job_id == job_id
        ),
        key=lambda d: d["node_id"],
    )


def _checkpoint_state(path: str) -> dict[str, Any]:
    from ray.train import Checkpoint

    with Checkpoint.from_directory(path).as_directory() as d:
        return json.loads((Path(d) / STATE_FILE).read_text())  # type: ignore[no-any-return]


def training_summary(state: dict[str, Any], stop_accuracy: float) -> dict[str, Any]:
    """Worker-seconds, resizes, restart times and the outcome of a training state."""
    from policies import EpochRecord, outcome, summarize_allocation

    records = [EpochRecord(**r) for r in state.get("records", [])]
    alloc = dict(summarize_allocation(records))
    restarts = [
        seg["resumed_at"] - seg["at_s"]
        for seg in state.get("segments", [])
        if seg.get("resumed_at") is not None
    ]
    first_start = (
        state["history"][0]["elapsed_s"] - state["history"][0]["epoch_seconds"]
        if state["history"] and "epoch_seconds" in state["history"][0]
        else 0.0
    )
    # Workers hold their CPUs from their start to the end of training: epochs, restarts and
    # the first start (worker-seconds as a cluster scheduler would bill them).
    worker_seconds = (
        alloc["epoch_worker_seconds"]
        + sum(
            seg["to"] * (seg["resumed_at"] - seg["at_s"])
            for seg in state.get("segments", [])
            if seg.get("resumed_at") is not None
        )
        + (records[0].workers * first_start if records else 0.0)
    )
    label = outcome(state.get("stop_reason"), state["best_val_accuracy"], stop_accuracy)
    return {
        "worker_seconds": worker_seconds,
        "resizes": int(alloc["resizes"]),
        "restart_seconds": restarts,
        "outcome": label.value,
        "segments": state.get("segments", []),
    }


def _finish(spec: dict[str, Any], checkpoint_path: str, resume: str | None) -> dict[str, Any]:
    """The job's result from the final checkpoint. Rank 0 exported the model when training
    stopped; only a checkpoint without an export (an attempt that died in between) is
    exported here."""
    from ray.train import Checkpoint

    with Checkpoint.from_directory(checkpoint_path).as_directory() as d:
        state = json.loads((Path(d) / STATE_FILE).read_text())
        best = load_snapshot(spec, Path(d), BEST)
    if state.get("model_uri"):
        training_seconds = float(state["training_seconds"])
        summary = state["summary"]
        model_uri = state["model_uri"]
    else:
        training_seconds = time.time() - float(spec["started_at"])
        summary = training_summary(state, float(spec["stop_accuracy"]))
        model_uri = export_and_log(spec, best, state, training_seconds, summary)
    return {
        **summary,
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_val_accuracy": state["best_val_accuracy"],
        "stop_reason": state.get("stop_reason"),
        "history": state["history"],
        # Per epoch, all but the last (whose overhead includes the export): seconds outside
        # the pass over the data.
        "overhead_seconds": state.get("overhead_s", []),
        "training_seconds": training_seconds,
        "deadline_met": deadline_met(training_seconds, float(spec["deadline_s"])),
        "num_workers": spec["num_workers"],
        "checkpoint_path": checkpoint_path,
        "resumed_from": resume,
        "model_uri": model_uri,
    }


if __name__ == "__main__":
    run_entrypoint(run_training)
