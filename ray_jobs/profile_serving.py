"""Ray Job: profile a model version for serving, through the real Serve path.

For the full model and its int8 variant (built here and logged to the run): test-set
accuracy; then, per replica shape (CPUs) and batch size, a one-replica Serve deployment
measured over HTTP on loopback: deploy-to-first-answer (the cold start a scale-to-zero tier
pays), p50/p99 of sequential one-row requests, saturated throughput with concurrent clients,
and the extra time per row of a large request. Also a no-op deployment's p50 on the same path
(the floor any model adds to). Written to ``serving/profile.json`` on the run; the placement
planner reads it from there.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from typing import Any

import numpy as np

from ray_jobs import data_io
from ray_jobs._entry import run_entrypoint

PROFILE_ARTIFACT = "serving/profile.json"


def wait_ready(url: str, timeout_s: float = 300.0) -> float:
    import requests

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if requests.get(url, timeout=5).ok:
                return time.monotonic() - t0
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


def measure(url: str, x: np.ndarray, *, sequential: int = 60, concurrency: int = 8,
            load_s: float = 3.0, big_rows: int = 64) -> dict[str, float]:
    """Latency at low load, saturated throughput and per-row cost of one endpoint."""
    import requests

    rows = [x[i % len(x)].tolist() for i in range(max(sequential, big_rows))]
    lat: list[float] = []
    with requests.Session() as http:
        for i in range(5):  # warm the connection and the replica
            http.post(url, json={"instances": [rows[i]]}, timeout=30)
        for i in range(sequential):
            t0 = time.perf_counter()
            r = http.post(url, json={"instances": [rows[i]]}, timeout=30)
            lat.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
        big: list[float] = []
        for _ in range(10):
            t0 = time.perf_counter()
            http.post(url, json={"instances": rows[:big_rows]}, timeout=30).raise_for_status()
            big.append((time.perf_counter() - t0) * 1000)
    done = [0]
    stop = time.monotonic() + load_s
    lock = threading.Lock()

    def client(k: int) -> None:
        with requests.Session() as http:
            i = k
            while time.monotonic() < stop:
                if http.post(url, json={"instances": [rows[i % len(rows)]]}, timeout=30).ok:
                    with lock:
                        done[0] += 1
                i += concurrency

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p50 = statistics.median(lat)
    return {"p50_ms": round(p50, 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "capacity_rps": round(done[0] / (time.monotonic() - t0), 1),
            "row_ms": round(max(0.0, statistics.median(big) - p50) / (big_rows - 1), 4)}


def run_profile(spec: dict[str, Any]) -> dict[str, Any]:
    import mlflow
    from ray import serve

    from ray_jobs.model_format import Predictor, find_model_dir
    from ray_jobs.serve_app import NoopServer, wait_running
    from ray_jobs.serve_router import build_routed_app
    from ray_jobs.variants import VARIANT_FULL, VARIANT_INT8, Int8Predictor, log_int8_variant

    mlflow.set_tracking_uri(spec["tracking_uri"])
    mlflow.set_registry_uri(spec["tracking_uri"])
    run_id = spec["mlflow_run_id"]
    try:
        variant_uri = log_int8_variant(spec["model_uri"], run_id, spec["feature_mean"],
                                       spec["feature_std"])
    except ValueError as exc:  # a model without Dense layers: profile the full model only
        print(f"[profile] no int8 variant: {exc}", flush=True)
        variant_uri = ""
    with tempfile.TemporaryDirectory() as tmp:
        full = Predictor(find_model_dir(mlflow.artifacts.download_artifacts(
            spec["model_uri"], dst_path=f"{tmp}/full")))
        x, y = data_io.read_xy(spec["test_path"], full.metadata.feature_names)
        acc = {VARIANT_FULL: float((full.predict_classes(x) == y).mean())}
        size = {VARIANT_FULL: full.parameter_count() * 4}
        if variant_uri:
            int8 = Int8Predictor(mlflow.artifacts.download_artifacts(variant_uri,
                                                                     dst_path=f"{tmp}/int8"))
            acc[VARIANT_INT8] = float((int8.predict_proba(x).argmax(axis=1) == y).mean())
            size[VARIANT_INT8] = int8.weight_bytes
    print(f"[profile] accuracy {acc}", flush=True)

    serve.start(http_options={"host": spec["serve_host"], "port": int(spec["serve_port"])})
    name = f"{spec['model_name']}-profile"
    url = f"{spec['serve_url']}/{name}"
    points: list[dict[str, Any]] = []
    cold: dict[str, float] = {}
    try:
        serve.run(NoopServer.bind(), name=name, route_prefix=f"/{name}", blocking=False)
        wait_ready(url)
        noop = measure(url, np.zeros((1, 1)), sequential=60, load_s=0.5, big_rows=2)
        print(f"[profile] no-op deployment p50 {noop['p50_ms']:.2f} ms", flush=True)
        for variant in [v for v in spec.get("variants", [VARIANT_FULL, VARIANT_INT8])
                        if v in acc]:
            for cpus in spec.get("cpus", [0.5, 1.0]):
                batches = spec.get("batches", [1, 16])
                serve.delete(name)
                t0 = time.monotonic()
                for k, b in enumerate(batches):
                    # measured through the served path: router ingress -> one replica
                    opts = {"num_replicas": 1, "ray_actor_options": {"num_cpus": cpus},
                            "user_config": {"max_batch_size": b,
                                            "batch_wait_timeout_s": 0.002}}
                    serve.run(build_routed_app(
                        name, spec["tracking_uri"],
                        [{"version": spec["version"], "model_uri": spec["model_uri"],
                          "variant": variant, "variant_uri": variant_uri,
                          "tiers": {"warm": opts}}],
                        {"primary": spec["version"], "candidate": None, "share": 0.0,
                         "thresholds": {"large_rows": 1024, "frequent_rps": 1.0}}),
                        name=name, route_prefix=f"/{name}", blocking=False)
                    if k == 0:
                        wait_ready(url)
                        cold[variant] = min(cold.get(variant, 1e9), time.monotonic() - t0)
                    wait_running(name)
                    wait_ready(url)
                    m = measure(url, x, load_s=float(spec.get("load_s", 3.0)))
                    points.append({"variant": variant, "num_cpus": cpus, "max_batch_size": b,
                                   **m})
                    print(f"[profile] {variant} {cpus:g} CPU batch {b}: p50 {m['p50_ms']:.2f} "
                          f"p99 {m['p99_ms']:.2f} ms, {m['capacity_rps']:.0f} req/s, "
                          f"{m['row_ms']:.4f} ms/row", flush=True)
    finally:
        serve.delete(name)
    profile = {"variants": [{"name": v, "accuracy": round(acc[v], 6),
                             "cold_start_s": round(cold.get(v, 0.0), 3),
                             "size_bytes": int(size[v])} for v in acc if v in cold],
               "points": points, "overhead_p50_ms": noop["p50_ms"]}
    with mlflow.start_run(run_id=run_id):
        mlflow.log_dict({**profile, "variant_uri": variant_uri,
                         "version": spec["version"]}, PROFILE_ARTIFACT)
        mlflow.log_metrics({"serving_noop_p50_ms": noop["p50_ms"],
                            **{f"serving_{v}_accuracy": a for v, a in acc.items()}})
    return {"profile": profile, "variant_uri": variant_uri, "version": spec["version"],
            "profile_uri": f"runs:/{run_id}/{PROFILE_ARTIFACT}"}


if __name__ == "__main__":
    run_entrypoint(run_profile)
