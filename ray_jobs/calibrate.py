"""Ray Job: measure training throughput on the target cluster, per worker count and shape.

For each worker count asked for, one short Ray Train run trains ``epochs`` real epochs of the
contract's model on the prepared data, exactly as the training job does (fit, validation,
checkpoint-sized report). The warm epoch time is the throughput; the rest of the run's wall
time (worker group start, TensorFlow start-up, data load, teardown) is the fixed cost of a
(re)start. The Airflow side caches the answer in MLflow, keyed on the cluster and the job.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from ray_jobs.entry import run_entrypoint
from ray_jobs.learners import make_learner, trainer_for
from ray_jobs.user_loop import LoopReturned


def calibrate_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train

    learner = make_learner(config)
    durations = []
    for epoch in range(int(config["epochs"])):
        start = time.time()
        try:
            learner.fit_epoch(epoch)
        except LoopReturned:  # a user's loop with fewer epochs than the calibration
            break
        learner.validate()
        learner.snapshot()  # what a checkpoint costs
        durations.append(time.time() - start)
    learner.close()
    warm = durations[1:] or durations
    steps = learner.steps_per_epoch
    metrics = {"epoch_s": sum(warm) / len(warm), "loop_s": sum(durations), "steps_per_epoch": steps}
    # Ray Train V2 keeps metrics only with a checkpoint: rank 0 reports a tiny one.
    if ray.train.get_context().get_world_rank() == 0:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "calibration.json").write_text(json.dumps(metrics))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    else:
        ray.train.report(metrics)


def run_calibration(spec: dict[str, Any]) -> dict[str, Any]:
    from ray_jobs.worker import check_inputs

    check_inputs(spec)
    import ray
    from ray.train import RunConfig, ScalingConfig

    ray.init(runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1"}})
    shape = spec.get("shape", "cpu")
    epoch_s: dict[str, float] = {}
    startups = []
    for n in spec["worker_counts"]:
        resources = {"CPU": spec["cpus_per_worker"]} | ({"GPU": 1} if shape == "gpu" else {})
        trainer = trainer_for(
            spec,
            calibrate_loop_per_worker,
            train_loop_config=spec,
            scaling_config=ScalingConfig(
                num_workers=n, use_gpu=shape == "gpu", resources_per_worker=resources
            ),
            run_config=RunConfig(
                name=f"calibrate-{spec['key'][:12]}-{shape}{n}-{int(time.time())}",
                storage_path=spec["storage_path"],
                worker_runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1"}},
            ),
        )
        started = time.time()
        result = trainer.fit()
        wall = time.time() - started
        if result.checkpoint is None:
            raise RuntimeError(f"calibration with {n} workers reported nothing: {result.error}")
        with result.checkpoint.as_directory() as d:
            metrics = json.loads((Path(d) / "calibration.json").read_text())
        epoch_s[str(n)] = float(metrics["epoch_s"])
        startups.append(max(0.0, wall - float(metrics["loop_s"])))
        print(
            f"[slaflow] calibration {shape} x{n}: {metrics['epoch_s']:.3f}s per epoch "
            f"({metrics['steps_per_epoch']} steps), start-up {startups[-1]:.1f}s",
            flush=True,
        )
    return {
        "shape": shape,
        "epoch_s": epoch_s,
        "startup_s": max(startups),
        "measured_at": time.time(),
    }


if __name__ == "__main__":
    run_entrypoint(run_calibration)
