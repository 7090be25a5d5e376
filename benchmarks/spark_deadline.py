"""Spark under a deadline on a real standalone master: dynaSpark's loop vs static allocation.

    python benchmarks/spark_deadline.py [--cores 2] [--reps 3] [--rows 120000000]
                                        [--sim-seeds 3] [--out FILE]

Starts a Spark standalone master and worker on this machine (``slaflow.spark_standalone``),
profiles a three-stage job (hash 120M rows, shuffle and aggregate, re-aggregate) on all the
cores, then runs it with deadlines at 0%, 20% and 40% slack over the profiled time:

- ``slaflow``: ``spark_jobs.deadline.run_with_deadline`` (feasibility from the profile, cores
  per stage from dynaSpark's heuristic, PI loop on tasks done every 0.5 s, one-core executors
  added and killed on the live application);
- ``static``: the fewest cores that meet the same deadline from the start (the profile's
  core-seconds over alpha x deadline, rounded up), held from start to end.

``core_seconds`` counts cores held x seconds (executor registrations, from Spark's REST API).
The simulated multi-application case (``benchmarks/spark_sim.py``, proportional and EDF arbiter)
is run too and written under ``simulated``. Results: ``benchmarks/results/spark_deadline.json``
and a plot next to it (``spark_deadline.png``; ``--plot-only`` redraws it from the JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def work(spark: Any, rows: int) -> int:
    """Three stages: hash ``rows`` rows; shuffle and sum per key; re-aggregate per bucket."""
    agg = (
        spark.range(0, rows, numPartitions=12)
        .selectExpr("id % 5000 as k", "crc32(cast(id * 7 as string)) as v")
        .groupBy("k")
        .sum("v")
        .withColumnRenamed("sum(v)", "s")
    )
    return len(agg.selectExpr("k % 50 as b", "s").groupBy("b").count().collect())


def static_run(spark: Any, rows: int, cores: int, deadline_s: float) -> dict[str, Any]:
    from spark_jobs.deadline import ExecutorActuator

    actuator = ExecutorActuator(spark.sparkContext)
    actuator.set_cores(cores)
    held = actuator.wait_for(cores)
    t = time.monotonic()
    work(spark, rows)
    elapsed = time.monotonic() - t
    return {
        "cores": cores,
        "held": held,
        "elapsed_s": round(elapsed, 3),
        "met": elapsed <= deadline_s,
        "finish_over_deadline": round(elapsed / deadline_s, 4),
        "core_seconds": round(elapsed * held, 2),
    }


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    """Finish/deadline and core-seconds per slack, slaflow vs static (means over the reps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{int(r['slack'] * 100)}%" for r in summary]
    xs = range(len(summary))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key, title in (
        (left, "finish_over_deadline", "finish / deadline (mean)"),
        (right, "core_seconds", "core-seconds (mean)"),
    ):
        for shift, who in ((-0.2, "slaflow"), (0.2, "static")):
            vals = [r[f"{who}_{key}"] or 0.0 for r in summary]
            met = [f"{r[f'{who}_met']}/{r['runs']}" for r in summary]
            bars = ax.bar([x + shift for x in xs], vals, width=0.4, label=who)
            if key == "finish_over_deadline":
                ax.bar_label(bars, labels=met, fontsize=8)
        ax.set_xticks(list(xs), labels)
        ax.set_xlabel("slack over the profiled time")
        ax.set_title(title, fontsize=10)
    left.axhline(1.0, color="black", lw=0.8, ls="--")
    left.legend(fontsize=8)
    fig.suptitle(
        "Spark under a deadline on a real standalone master (labels: deadlines met)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rows", type=int, default=120_000_000)
    p.add_argument("--sim-seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/spark_deadline.json")
    p.add_argument("--plot-only", action="store_true", help="redraw the plot from --out")
    args = p.parse_args()
    if args.plot_only:
        plot(json.loads(args.out.read_text())["real"]["summary"], args.out.with_suffix(".png"))
        return 0

    from operators.hooks import SparkHook
    from policies import SPARK_ALPHA
    from slaflow.spark_standalone import SparkStandalone
    from spark_jobs.deadline import load_profile, run_with_deadline

    real: dict[str, Any] = {"cores": args.cores, "rows": args.rows, "reps": args.reps, "runs": []}
    with (
        tempfile.TemporaryDirectory(prefix="slaflow-bench-spark-") as tmp,
        SparkStandalone(
            Path(tmp) / "cluster",
            cores=args.cores,
            port=7379,
            ui_port=8394,
            worker_ui_port=8395,
            shuffle_port=7398,
        ) as cluster,
    ):
        spark = SparkHook().session(
            "slaflow-bench-spark",
            master=cluster.master_url,
            conf={
                **cluster.app_conf(),
                "spark.executor.cores": "1",
                "spark.executor.memory": "768m",
                "spark.cores.max": str(args.cores),
                "spark.dynamicAllocation.enabled": "false",
                "spark.sql.adaptive.enabled": "false",
                "spark.sql.shuffle.partitions": "12",
            },
        )
        profile_path = Path(tmp) / "profile.json"
        static_run(spark, args.rows, args.cores, 1e9)  # warm-up: JIT, executors, shuffle
        _, prof = run_with_deadline(
            spark,
            lambda: work(spark, args.rows),
            deadline_s=1e9,
            max_cores=args.cores,
            profile_path=profile_path,
        )
        profiled_s = prof["elapsed_s"]
        stages = load_profile(profile_path) or []
        total_core_s = sum(s.core_seconds for s in stages)
        real.update(
            profiled_s=profiled_s,
            profiled_core_seconds=round(total_core_s, 2),
            profile=[
                {
                    "name": s.name,
                    "records": s.records,
                    "nominal_rate": round(s.nominal_rate, 1),
                    "tasks": s.tasks,
                    "overhead_s": round(s.overhead_s, 3),
                }
                for s in stages
            ],
        )
        print(json.dumps({"profiled_s": profiled_s, "stages": len(stages)}), flush=True)
        for slack in (0.0, 0.2, 0.4):
            deadline = round(profiled_s * (1 + slack), 2)
            static_cores = max(
                1, min(args.cores, math.ceil(total_core_s / (SPARK_ALPHA * deadline) - 1e-9))
            )
            for rep in range(args.reps):
                try:
                    _, ctl = run_with_deadline(
                        spark,
                        lambda: work(spark, args.rows),
                        deadline_s=deadline,
                        max_cores=args.cores,
                        profile_path=profile_path,
                        period_s=0.5,
                        log=lambda _line: None,
                    )
                    slaflow = {
                        k: ctl[k]
                        for k in ("mode", "elapsed_s", "met", "core_seconds", "stage_plans")
                    }
                    slaflow["finish_over_deadline"] = round(ctl["elapsed_s"] / deadline, 4)
                    slaflow["predicted_feasible"] = True
                    slaflow["min_cores_held"] = min(r["held"] for r in ctl["timeline"])
                except Exception as exc:  # infeasible: refused before running
                    slaflow = {
                        "mode": "refused",
                        "predicted_feasible": False,
                        "reason": str(exc),
                        "met": False,
                        "core_seconds": 0.0,
                    }
                static = static_run(spark, args.rows, static_cores, deadline)
                row = {
                    "slack": slack,
                    "deadline_s": deadline,
                    "rep": rep,
                    "slaflow": slaflow,
                    "static": static,
                }
                real["runs"].append(row)
                print(
                    json.dumps(
                        {k: row[k] for k in ("slack", "deadline_s", "rep")}
                        | {
                            "slaflow": {k: v for k, v in slaflow.items() if k != "stage_plans"},
                            "static": static,
                        }
                    ),
                    flush=True,
                )
        spark.stop()

    summary = []
    for slack in (0.0, 0.2, 0.4):
        rows = [r for r in real["runs"] if r["slack"] == slack]
        ran = [r for r in rows if r["slaflow"]["predicted_feasible"]]
        summary.append(
            {
                "slack": slack,
                "deadline_s": rows[0]["deadline_s"],
                "slaflow_predicted_feasible": bool(ran),
                "slaflow_met": sum(r["slaflow"]["met"] for r in ran),
                "runs": len(rows),
                "slaflow_finish_over_deadline": round(
                    statistics.mean(r["slaflow"]["finish_over_deadline"] for r in ran), 4
                )
                if ran
                else None,
                "slaflow_core_seconds": round(
                    statistics.mean(r["slaflow"]["core_seconds"] for r in ran), 2
                )
                if ran
                else None,
                "static_cores": rows[0]["static"]["cores"],
                "static_met": sum(r["static"]["met"] for r in rows),
                "static_finish_over_deadline": round(
                    statistics.mean(r["static"]["finish_over_deadline"] for r in rows), 4
                ),
                "static_core_seconds": round(
                    statistics.mean(r["static"]["core_seconds"] for r in rows), 2
                ),
            }
        )
    real["summary"] = summary
    print(json.dumps(summary), flush=True)

    from spark_sim import run_scenarios

    simulated = run_scenarios(args.sim_seeds, 200) if args.sim_seeds > 0 else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "date": time.strftime("%Y-%m-%d"),
                "real": real,
                "simulated": simulated,
                "sim_seeds": args.sim_seeds,
            },
            indent=1,
        )
    )
    plot(summary, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
