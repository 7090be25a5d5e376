"""Federated training with a quality target: hyperFL's linear and quadratic control of local
epochs vs static E, on real Ray actor clients.

    python benchmarks/federated.py [--seeds 5] [--out FILE]

For each seed: the digits data prepared by the Spark job, split over ``CLIENTS`` clients by a
Dirichlet(alpha) label split (the seed draws the split, the client sampling and the initial
model), then the same FedAvg loop as ``ray_jobs.federated`` (same client actors, the policy
``policies.next_round``) for static E in {1, 4, 16}, linear and quadratic. Recorded per run:
whether the target was reached within R rounds, the rounds and client-epochs (local epochs
summed over participating clients) used to reach it, wall seconds. Clients are reused across
the strategies of a seed (shards fixed); each run starts from the same initial model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from lifecycle import machine  # noqa: E402

# Target above what E=1 reaches in R rounds on this data, so the choice of E matters.
CLIENTS, PER_ROUND, ROUNDS, TARGET, ALPHA = 10, 4, 10, 0.96, 0.5
STRATEGIES = [("static", 1), ("static", 4), ("static", 16), ("linear", 1), ("quadratic", 1)]


def prepare(home: Path) -> dict[str, Any]:
    from operators.hooks import SparkHook
    from spark_jobs.prepare import run_prepare

    session = SparkHook().session("slaflow-bench-federated")
    try:
        return run_prepare(
            session,
            source="sklearn:digits",
            label_column="label",
            output_dir=str(home / "bench" / "federated"),
            validation_fraction=0.15,
            test_fraction=0.15,
            seed=7,
            cache_dir=home / "datasets",
        )
    finally:
        session.stop()


def plot(runs: list[dict[str, Any]], names: list[str], target: float, path: Path) -> None:
    """Validation accuracy against cumulative client-epochs, seed 0, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        row = next(r for r in runs if r["strategy"] == name and r["seed"] == 0)
        spent = [0]
        for e in row["local_epochs"]:
            spent.append(spent[-1] + e * PER_ROUND)
        # Round 0 (no epochs yet) has no place on a log axis: start at round 1.
        ax.plot(spent[1 : len(row["accuracy"])], row["accuracy"][1:], marker="o", ms=3, label=name)
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target}")
    ax.set_xscale("log")
    ax.set_xlabel("client-epochs spent (local epochs x participants)")
    ax.set_ylabel("global model val accuracy")
    ax.set_ylim(0.5, 1.0)
    ax.set_title("FedAvg on 10 non-IID clients, 4 per round (seed 0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/federated.json")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--target", type=float, default=TARGET)
    parser.add_argument("--alpha", type=float, default=ALPHA)
    args = parser.parse_args()
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    from slaflow.local_cluster import LocalRayCluster
    from slaflow.settings import Endpoints, ensure_ray_client_env

    ep = Endpoints.from_env()
    home = Path(os.environ.get("SLAFLOW_HOME", REPO / ".slaflow"))
    profile = prepare(home)
    cluster = LocalRayCluster.from_env()
    cluster.start()
    ensure_ray_client_env()  # Ray reads the auth token when it is imported: this comes first.
    import numpy as np
    import ray

    from ray_jobs import data_io
    from ray_jobs.federated import Federation, dirichlet_partition, make_clients, train_federated

    ray.init(
        address=ep.ray_address,
        logging_level="ERROR",
        runtime_env={
            "env_vars": {"TF_USE_LEGACY_KERAS": "1"},
            "working_dir": str(REPO),
            "excludes": [".venv", ".slaflow", ".git", "benchmarks/results"],
        },
    )
    _, y = data_io.read_xy(profile["paths"]["train"], profile["feature_names"])
    runs: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        spec = {
            "profile": profile,
            "train_path": profile["paths"]["train"],
            "val_path": profile["paths"]["val"],
            "hidden_units": [32],
            "learning_rate": 0.01,
            "batch_size": 32,
            "seed": seed,
            "max_workers": 2,
            "cpus_per_worker": 1.0,
            "deadline_s": 3600.0,
            "stop_accuracy": args.target,
            "fl_rounds": args.rounds,
            "fl_clients_per_round": PER_ROUND,
            "fl_network_budget": 0,
            "fl_max_local_epochs": 32,
            "fl_round_timeout_s": 300.0,
        }
        shards = dirichlet_partition(y, CLIENTS, args.alpha, seed)
        clients = make_clients(spec, shards)
        federation = Federation(spec, clients)
        initial = federation.model.get_weights()  # every strategy starts from this model
        for strategy, e in STRATEGIES:
            run_spec = {
                **spec,
                "fl_strategy": strategy,
                "fl_local_epochs": e,
                "started_at": time.time(),
            }
            federation.spec = run_spec
            federation.busy.clear()
            federation.model.set_weights(initial)
            started = time.monotonic()
            out = train_federated(run_spec, federation, checkpoint=False)
            state = out["state"]
            recs = state["records"]
            reached = state["stop_reason"] == "target_met"
            row = {
                "seed": seed,
                "strategy": strategy if strategy != "static" else f"static_E{e}",
                "reached": reached,
                "rounds": state["round"],
                "client_epochs": sum(r["local_epochs"] * r["participants"] for r in recs),
                "participations": sum(r["participants"] for r in recs),
                "best_val_accuracy": round(state["best_val_accuracy"], 4),
                "local_epochs": [r["local_epochs"] for r in recs[1:]],
                "accuracy": [round(r["accuracy"], 4) for r in recs],
                "wall_s": round(time.monotonic() - started, 1),
            }
            runs.append(row)
            print(json.dumps(row), flush=True)
        for handle in clients.values():
            ray.kill(handle)

    names = [s if s != "static" else f"static_E{e}" for s, e in STRATEGIES]
    summary: dict[str, Any] = {}
    for name in names:
        rows = [r for r in runs if r["strategy"] == name]
        hit = [r for r in rows if r["reached"]]
        summary[name] = {
            "reached_share": len(hit) / len(rows),
            "mean_rounds_to_target": statistics.mean(r["rounds"] for r in hit) if hit else None,
            "mean_client_epochs_to_target": statistics.mean(r["client_epochs"] for r in hit)
            if hit
            else None,
            "mean_wall_s": statistics.mean(r["wall_s"] for r in rows),
        }
    statics = [n for n in names if n.startswith("static") and summary[n]["reached_share"] >= 0.9]
    best_static = min(
        statics, key=lambda n: summary[n]["mean_client_epochs_to_target"], default=None
    )
    for name in ("linear", "quadratic"):
        s = summary[name]
        if best_static and s["mean_client_epochs_to_target"] is not None:
            # Paired per seed: the seeds where both reached the target.
            pairs = [
                (a["client_epochs"], b["client_epochs"])
                for a in runs
                for b in runs
                if a["strategy"] == name
                and b["strategy"] == best_static
                and a["seed"] == b["seed"]
                and a["reached"]
                and b["reached"]
            ]
            s["client_epochs_vs_best_static"] = (
                round(sum(p[0] for p in pairs) / sum(p[1] for p in pairs), 3) if pairs else None
            )
        s["meets_target"] = bool(
            s["reached_share"] >= 0.9
            and s.get("client_epochs_vs_best_static") is not None
            and s["client_epochs_vs_best_static"] <= 0.8
        )
    result = {
        "machine": machine(),
        "setup": {
            "data": "sklearn digits (Spark prepare job), 70% train",
            "clients": CLIENTS,
            "clients_per_round": PER_ROUND,
            "rounds_budget": args.rounds,
            "target_val_accuracy": args.target,
            "dirichlet_alpha": args.alpha,
            "model": "MLP 32, Adam 0.01 (fresh state each round), batch 32",
            "seeds": args.seeds,
        },
        "best_static": best_static,
        "summary": summary,
        "runs": runs,
        "np_version": np.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(runs, names, args.target, args.out.with_suffix(".png"))
    print(json.dumps({"best_static": best_static, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
