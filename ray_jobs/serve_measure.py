"""Measure one endpoint from a process of its own (no other threads share its interpreter):

    python -m ray_jobs.serve_measure SPEC.json

SPEC: ``{"url", "rows", "sequential", "concurrency", "load_s", "big_rows", "warmup"}``.
Prints one JSON line: one-row latency at low load (p50/p99 of ``sequential`` requests after
``warmup``), saturated requests/s with ``concurrency`` clients, and the extra milliseconds per
row of a ``big_rows`` request. ``ServeHook.measure`` runs it; nothing else should.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from typing import Any


def measure(spec: dict[str, Any]) -> dict[str, float]:
    import numpy as np
    import requests

    url = spec["url"]
    sequential, big_rows = int(spec["sequential"]), int(spec["big_rows"])
    rows = [spec["rows"][i % len(spec["rows"])] for i in range(max(sequential, big_rows))]
    lat: list[float] = []
    with requests.Session() as http:
        for i in range(int(spec.get("warmup", 20))):  # the connection, router and replica
            http.post(url, json={"instances": [rows[i % len(rows)]]}, timeout=30)
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
    concurrency = int(spec["concurrency"])
    done = [0]
    stop = time.monotonic() + float(spec["load_s"])
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
    return {
        "p50_ms": round(p50, 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "capacity_rps": round(done[0] / (time.monotonic() - t0), 1),
        "row_ms": round(max(0.0, statistics.median(big) - p50) / max(1, big_rows - 1), 4),
    }


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        print(json.dumps(measure(json.load(fh))), flush=True)
