"""Wall time of ml_lifecycle per stage, through the demo's own CLI.

    python benchmarks/lifecycle.py --runs 2 [--out benchmarks/results/lifecycle.json]

Each run is a new DAG run on the embedded defaults (the first may include starting Ray and
migrating the Airflow DB: that is the "cold" number). Writes one JSON document with every
run's stage seconds, training seconds, verify latencies and the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict[str, object]:
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    return {"cpus": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "platform": platform.platform(), "python": platform.python_version()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/lifecycle.json")
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "slaflow.cli", "demo"], cwd=REPO,
                              capture_output=True, text=True, check=False)
        wall = time.monotonic() - started
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        runs.append({"run": i + 1, "process_wall_seconds": round(wall, 1),
                     "dag_wall_seconds": summary["demo_wall_seconds"],
                     "stage_seconds": summary["stage_seconds"],
                     "training_seconds": summary["training_seconds"],
                     "accuracy": summary["accuracy"], "alias": summary["alias"],
                     "verify_p50_ms": summary["verify_p50_ms"],
                     "verify_p99_ms": summary["verify_p99_ms"]})
        print(json.dumps(runs[-1]))
    doc = {"benchmark": "lifecycle", "machine": machine(),
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
