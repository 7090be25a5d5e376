"""Ray Job: the model's own serving compute, per variant, replica shape and batch size.

One Ray actor per thread count a replica shape gets (``ceil(CPUs)``, as ``ModelServer`` sets
TensorFlow's threads), placed with the serving resources (the contract's node resource), so
the numbers come from the node type replicas run on. In a fresh worker process it times what
a replica's start pays (importing MLflow and TensorFlow, downloading and loading each
variant), then calls each variant in-process: one-row latency (p50/p99), a full batch per
batch size, and the cost of each extra row. The Serve path itself (proxy, router, replica) is
measured once per node type by ``ServeHook.measure_overhead``; ``policies.build_profile``
adds the two up. Both variants were built and scored by the evaluate job.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from ray_jobs.entry import run_entrypoint


class ComputeSampler:
    """One replica shape's worth of compute, measured in a fresh worker process."""

    def __init__(self, spec: dict[str, Any], threads: int) -> None:
        self.loads: dict[str, float] = {}
        self.predictors: dict[str, Any] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="slaflow-profile-")
        t0 = time.perf_counter()
        import mlflow

        mlflow.set_tracking_uri(spec["tracking_uri"])
        mlflow.set_registry_uri(spec["tracking_uri"])
        base = time.perf_counter() - t0
        if spec.get("variant_uri"):
            # LiteRT only, no TensorFlow, as in the replica
            from ray_jobs.variants import LiteRTPredictor

            t1 = time.perf_counter()
            flatbuffer = mlflow.artifacts.download_artifacts(
                spec["variant_uri"], dst_path=f"{self._tmp.name}/int8"
            )
            self.predictors["int8"] = LiteRTPredictor(flatbuffer, threads=threads)
            self.loads["int8"] = base + time.perf_counter() - t1
        t2 = time.perf_counter()
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        from ray_jobs.model_format import find_model_dir, open_predictor

        local = mlflow.artifacts.download_artifacts(
            spec["model_uri"], dst_path=f"{self._tmp.name}/full"
        )
        self.predictors["full"] = open_predictor(find_model_dir(local))
        self.n_features = self.predictors["full"].metadata.n_features
        self.predictors["full"].predict_proba(np.zeros((1, self.n_features)))  # trace once
        self.loads["full"] = base + time.perf_counter() - t2

    def measure(self, batches: list[int], calls: int = 200) -> list[dict[str, Any]]:
        rng = np.random.default_rng(0)
        one = rng.normal(size=(1, self.n_features)).astype("float32")
        big = rng.normal(size=(64, self.n_features)).astype("float32")
        out = []
        for variant, predictor in self.predictors.items():
            for _ in range(20):  # warm caches and the compiled function
                predictor.predict_proba(one)
            lat = []
            for _ in range(calls):
                t0 = time.perf_counter()
                predictor.predict_proba(one)
                lat.append((time.perf_counter() - t0) * 1000)
            p50 = statistics.median(lat)
            big_ms = _median_ms(predictor, big, 20)
            for b in batches:
                batch_ms = (
                    p50
                    if b == 1
                    else _median_ms(
                        predictor, rng.normal(size=(b, self.n_features)).astype("float32"), 20
                    )
                )
                out.append(
                    {
                        "variant": variant,
                        "max_batch_size": b,
                        "p50_ms": round(p50, 4),
                        "p99_ms": round(float(np.percentile(lat, 99)), 4),
                        "batch_ms": round(batch_ms, 4),
                        "row_ms": round(max(0.0, big_ms - p50) / 63, 5),
                        "load_s": round(self.loads[variant], 3),
                    }
                )
        return out


def _median_ms(predictor: Any, x: np.ndarray, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        predictor.predict_proba(x)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _measure(sampler_cls: Any, spec: dict[str, Any], options: dict[str, Any], threads: int) -> Any:
    """The points of one replica shape, measured by a sampler actor placed with ``options``
    (and the contract's node resource), which is killed afterwards."""
    import ray

    if spec.get("resource"):
        options = {**options, "resources": {spec["resource"]: 0.001}}
    sampler = sampler_cls.options(**options).remote(spec, threads)
    try:
        return ray.get(
            sampler.measure.remote([int(b) for b in spec["batches"]]),
            timeout=float(spec.get("timeout_s", 600)),
        )
    finally:
        ray.kill(sampler)


def run_profile(spec: dict[str, Any]) -> dict[str, Any]:
    import ray

    if not ray.is_initialized():  # a job's driver; a benchmark is connected already
        ray.init(log_to_driver=False)
    threads_for = {float(c): max(1, math.ceil(float(c))) for c in spec["cpus"]}
    samples: list[dict[str, Any]] = []
    sampler_cls = ray.remote(ComputeSampler)
    for threads in sorted(set(threads_for.values())):
        shapes = [c for c, t in threads_for.items() if t == threads]
        started = time.perf_counter()
        measured = _measure(sampler_cls, spec, {"num_cpus": max(shapes)}, threads)
        print(
            f"[profile] {threads} thread(s) for {shapes} CPU: "
            f"{len(measured)} points in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        for row in measured:
            for cpus in shapes:
                samples.append({**row, "num_cpus": cpus})
    if int(spec.get("gpus") or 0) > 0:
        # One GPU replica: the full model on the GPU (TensorFlow places it there on its own);
        # the int8 variant runs in LiteRT on the CPU, so it has no GPU shape.
        gpu_spec = {**spec, "variant_uri": ""}
        measured = _measure(sampler_cls, gpu_spec, {"num_cpus": 1, "num_gpus": 1}, 1)
        print(f"[profile] 1 GPU replica: {len(measured)} points", flush=True)
        samples += [{**row, "num_cpus": 1.0, "num_gpus": 1.0} for row in measured]
    return {"samples": samples}


if __name__ == "__main__":
    run_entrypoint(run_profile)
