"""Training under the contract: real contracts on this machine, and the cluster simulator.

    python benchmarks/training.py [--skip-real] [--skip-sim] [--out FILE]

Real part: each contract runs ``ml_lifecycle`` up to ``train`` (plan, prepare, feasibility,
train: real Spark, Ray Train, MLflow) through ``dag.test``, once with the deadline policy and
once with the static baseline that holds ``max_workers`` from start to end. The data set is a
synthetic classification CSV (written once under .slaflow/bench) large enough that epochs
take seconds, so the controller has something to control. For the tuning contract, Optuna's
plain ``timeout`` and Ray Tune's ``time_budget_s`` + ASHA get the same time budget and search
space, run in-process on the same data.

Simulated part: ``benchmarks/simulator.py`` on tens of nodes and hundreds of jobs, with the
throughput calibrated by the real runs (the calibration MLflow cached for this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from lifecycle import machine  # noqa: E402

BASE = {
    "task": "classification",
    "max_workers": 2,
    "cpus_per_worker": 1.0,
    "hidden_units": [64, 64],
    "batch_size": 32,
    "learning_rate": 0.0005,
    "max_epochs": 40,
    "model_name": "bench-training",
    "seed": 3,
    "target_accuracy": 0.97,
    "validation_fraction": 0.15,
    "test_fraction": 0.15,
}

#: The throughput this machine measured for the benchmark job; calibrates the simulator.
CALIBRATION = REPO / "benchmarks/results/calibration_this_machine.json"

CONTRACTS = [
    {"name": "loose", "deadline_s": 300.0},
    {"name": "medium", "deadline_s": 150.0},
    {"name": "tight", "deadline_s": 90.0},
    {"name": "infeasible", "deadline_s": 20.0},
    {"name": "unreachable_target", "deadline_s": 200.0, "target_accuracy": 0.999},
    {"name": "tuning", "deadline_s": 120.0, "tuning_trials": 8},
]


def dataset(path: Path) -> Path:
    if path.exists():
        return path
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=30000,
        n_features=32,
        n_informative=16,
        n_redundant=4,
        n_classes=4,
        n_clusters_per_class=2,
        class_sep=1.5,
        random_state=0,
    )
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"f{i}" for i in range(x.shape[1])])
    frame["label"] = y
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def run_contract(conf: dict[str, Any]) -> dict[str, Any]:
    from slaflow.cli import run_lifecycle

    started = time.monotonic()
    outcome = run_lifecycle(conf, until="train")
    tasks = outcome["tasks"]
    feas = (tasks.get("feasibility") or {}).get("value") or {}
    train = (tasks.get("train") or {}).get("value") or {}
    deadline = float(conf["deadline_s"])
    row: dict[str, Any] = {
        "state": outcome["state"],
        "wall_s": round(time.monotonic() - started, 1),
        "task_states": {k: v["state"] for k, v in tasks.items()},
        "predicted_feasible": feas.get("verdict", {}).get(
            "feasible", "feasibility" not in tasks or "failed" not in tasks["feasibility"]["state"]
        ),
        "verdict": feas.get("verdict"),
        "trained": bool(train),
        "throughput": feas.get("throughput"),
    }
    if "feasibility" in tasks and "failed" in tasks["feasibility"]["state"]:
        row["predicted_feasible"] = False
    if train:
        row.update(
            {
                "met": bool(train["deadline_met"]) and train["outcome"] == "target_met",
                "deadline_met": train["deadline_met"],
                "outcome": train["outcome"],
                "training_seconds": round(train["training_seconds"], 2),
                "finish_over_deadline": round(train["training_seconds"] / deadline, 4),
                "worker_seconds": round(train["worker_seconds"], 1),
                "best_val_accuracy": train["best_val_accuracy"],
                "epochs": train["epochs"],
                "workers_per_epoch": [h.get("workers") for h in train["history"]],
                "resizes": train["resizes"],
                "restart_seconds": train["restart_seconds"],
                "tuning": train.get("tuning"),
            }
        )
    return row


def tuning_baselines(data: Path, budget_s: float, seed: int) -> dict[str, Any]:
    """Optuna plain ``timeout`` and Ray Tune ``time_budget_s`` + ASHA, same space and data."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import optuna
    import pandas as pd

    frame = pd.read_csv(data)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(frame))
    n_val = int(0.15 * len(frame))
    n_test = int(0.15 * len(frame))
    val, train = idx[:n_val], idx[n_val + n_test :]
    x = frame.drop(columns=["label"]).to_numpy(np.float32)
    y = frame["label"].to_numpy(np.int32)
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    xs = (x - mean) / std
    max_epochs = BASE["max_epochs"]

    def fit(params: dict[str, Any], report: Any) -> float:
        from ray_jobs.model_format import tf_keras

        keras = tf_keras()
        layers = [keras.layers.Input((xs.shape[1],))]
        layers += [keras.layers.Dense(u, activation="relu") for u in params["hidden_units"]]
        layers += [keras.layers.Dense(4, activation="softmax")]
        model = keras.Sequential(layers)
        model.compile(
            keras.optimizers.Adam(params["learning_rate"]), "sparse_categorical_crossentropy"
        )
        best = 0.0
        for epoch in range(max_epochs):
            model.fit(xs[train], y[train], batch_size=params["batch_size"], epochs=1, verbose=0)
            acc = float(np.mean(np.argmax(model(xs[val], training=False).numpy(), 1) == y[val]))
            best = max(best, acc)
            if report(acc, epoch):
                break
        return best

    def space(trial: Any) -> dict[str, Any]:
        from ray_jobs.tune import suggest

        return suggest(trial)

    # Optuna with a study timeout: trials run sequentially and the running one is not cut.
    started = time.monotonic()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(lambda t: fit(space(t), lambda a, e: False), timeout=budget_s)
    optuna_row = {
        "best_val_accuracy": study.best_value,
        "trials": len(study.trials),
        "wall_s": round(time.monotonic() - started, 1),
        "overshoot_s": round(time.monotonic() - started - budget_s, 1),
    }

    # Ray Tune with ASHA and time_budget_s, same space.
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    def trainable(config: dict[str, Any]) -> None:
        params = {
            "learning_rate": config["learning_rate"],
            "hidden_units": [int(u) for u in config["hidden_units"].split("-")],
            "batch_size": config["batch_size"],
        }
        fit(params, lambda a, e: tune.report({"val_accuracy": a}) and False)

    ray.init(ignore_reinit_error=True)
    started = time.monotonic()
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={
            "learning_rate": tune.loguniform(1e-4, 3e-2),
            "hidden_units": tune.choice(["32", "64", "64-64", "128-64"]),
            "batch_size": tune.choice([32, 64, 128]),
        },
        tune_config=tune.TuneConfig(
            metric="val_accuracy",
            mode="max",
            num_samples=50,
            time_budget_s=budget_s,
            scheduler=ASHAScheduler(max_t=max_epochs, grace_period=2),
        ),
    )
    results = tuner.fit()
    best = results.get_best_result(metric="val_accuracy", mode="max", scope="all")
    tune_row = {
        "best_val_accuracy": float(best.metrics_dataframe["val_accuracy"].max()),
        "trials": len(results),
        "wall_s": round(time.monotonic() - started, 1),
        "overshoot_s": round(time.monotonic() - started - budget_s, 1),
    }
    return {"optuna_timeout": optuna_row, "ray_tune_asha": tune_row, "budget_s": budget_s}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/training_deadline.json")
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--skip-sim", action="store_true")
    p.add_argument("--only", nargs="*", default=None, help="contract names to run")
    p.add_argument(
        "--reuse-baselines",
        action="store_true",
        help="keep the tuning baselines of the previous results file",
    )
    args = p.parse_args()
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    result: dict[str, Any] = {
        "machine": machine(),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "real": previous.get("real", {}),
        "simulated": previous.get("simulated", {}),
    }
    if not args.skip_real:
        data = dataset(REPO / ".slaflow/bench/synthetic_30k.csv")
        for c in CONTRACTS:
            if args.only and c["name"] not in args.only:
                continue
            conf = {**BASE, **{k: v for k, v in c.items() if k != "name"}, "data_source": str(data)}
            print(f"== {c['name']}: {json.dumps(conf)}", flush=True)
            row = {"contract": conf, **run_contract(conf)}
            if row.get("throughput") and not CALIBRATION.exists():
                CALIBRATION.write_text(json.dumps(row["throughput"], indent=1))
            if row.get("trained") and not conf.get("tuning_trials"):
                static = run_contract({**conf, "resize_policy": "static"})
                row["static_max"] = static
                row["static_max_worker_seconds"] = static.get("worker_seconds")
                if static.get("worker_seconds"):
                    row["worker_seconds_vs_static_max"] = round(
                        row["worker_seconds"] / static["worker_seconds"], 3
                    )
            if conf.get("tuning_trials"):
                old = previous.get("real", {}).get(c["name"], {}).get("baselines")
                row["baselines"] = (
                    old
                    if args.reuse_baselines and old
                    else tuning_baselines(data, float(conf["deadline_s"]), 3)
                )
            result["real"][c["name"]] = row
            print(json.dumps({k: v for k, v in row.items() if k != "static_max"}), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1))
    if not args.skip_sim:
        import subprocess

        sim_out = REPO / "benchmarks/results/simulated.json"
        calib = CALIBRATION
        cmd = [sys.executable, str(REPO / "benchmarks/simulator.py"), "--out", str(sim_out)]
        if calib.exists():
            cmd += ["--calibration", str(calib)]
        sweeps = {}
        for nodes, rate in [(10, 0.2), (5, 0.1), (25, 0.5), (40, 0.2)]:
            subprocess.run(
                [*cmd, "--nodes", str(nodes), "--arrival-rate", str(rate)],
                check=True,
                capture_output=True,
            )
            sweeps[f"{nodes}x8cores@{rate}/s"] = json.loads(sim_out.read_text())
        main_cfg = sweeps["10x8cores@0.2/s"]
        result["simulated"] = {
            "jobs": main_cfg["jobs"],
            "nodes": main_cfg["nodes"],
            "cores": main_cfg["cores"],
            **{
                pol: main_cfg[pol]
                for pol in ("slaflow", "static_max", "static_fair", "edf_no_resize")
            },
            "sweep": {
                k: {
                    pol: v[pol] for pol in ("slaflow", "static_max", "static_fair", "edf_no_resize")
                }
                for k, v in sweeps.items()
            },
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result.get("simulated", {}).get("sweep", {}), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
