"""Wall time of ml_lifecycle per stage, through the demo's own CLI.

    python benchmarks/lifecycle.py --runs 2 [--clean] [--out benchmarks/results/lifecycle.json]

Each run is a new DAG run on the embedded defaults. With ``--clean`` the first run starts
from an empty ``SLAFLOW_HOME`` (the first run after the install: no calibration, no stored
serving profile, no model yet); later runs are warm. Writes one JSON document with every
run's stage seconds, the DAG run's wall time, whether the serving profile was reused, the
canary steps, verify latencies, and the machine it ran on, with the targets checked.
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
    mem_kb = next(
        (
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/lifecycle.json")
    parser.add_argument(
        "--clean",
        action="store_true",
        help="start from an empty SLAFLOW_HOME (stops the embedded Ray)",
    )
    args = parser.parse_args()
    if args.clean:
        subprocess.run([sys.executable, "-m", "slaflow.cli", "ray-down"], cwd=REPO, check=False)
        import shutil

        from slaflow.settings import home

        shutil.rmtree(home(), ignore_errors=True)
    runs = []
    for i in range(args.runs):
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "slaflow.cli", "demo"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.monotonic() - started
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        runs.append(
            {
                "run": i + 1,
                "process_wall_seconds": round(wall, 1),
                "dag_wall_seconds": summary["demo_wall_seconds"],
                "stage_seconds": summary["stage_seconds"],
                "model_version": summary["model_version"],
                "promoted": summary["promoted"],
                "serving_profile": summary.get("serving_profile"),
                "canary": summary.get("canary"),
                "training_seconds": summary["training_seconds"],
                "accuracy": summary["accuracy"],
                "alias": summary["alias"],
                "verify_p50_ms": summary["verify_p50_ms"],
                "verify_p99_ms": summary["verify_p99_ms"],
            }
        )
        print(json.dumps(runs[-1]))
    doc = {
        "benchmark": "lifecycle",
        "machine": machine(),
        "clean_start": args.clean,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs,
        "targets": _targets(runs, args.clean),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def _targets(runs: list[dict[str, object]], clean: bool) -> dict[str, object]:
    """Issue 16's numbers: a DAG run <= 150 s first after the install and <= 100 s warm; a new
    serving profile <= 30 s and a reused one <= 3 s."""
    out: dict[str, object] = {}
    if clean and runs:
        out["first_run_dag_at_most_150s"] = float(runs[0]["dag_wall_seconds"]) <= 150  # type: ignore[arg-type]
    warm = runs[1:] if clean else runs
    if warm:
        out["warm_runs_dag_at_most_100s"] = all(float(r["dag_wall_seconds"]) <= 100 for r in warm)  # type: ignore[arg-type]
    for r in runs:
        prof = r.get("serving_profile") or {}
        if isinstance(prof, dict) and prof.get("seconds") is not None:
            key = "reused_profile_at_most_3s" if prof.get("reused") else "new_profile_at_most_30s"
            ok = float(prof["seconds"]) <= (3 if prof.get("reused") else 30)
            out[key] = bool(out.get(key, True)) and ok
    return out


if __name__ == "__main__":
    sys.exit(main())
