"""Ray Job: an Optuna study inside the contract's deadline, trials in parallel on Ray.

Each trial is a Ray actor (one worker's CPUs) holding its own Keras model (the contract's: the
mlp or the user's builder, with the trial's settings from ``suggest``: the user's Optuna
define-by-run ``search_space`` or the built-in one); the driver steps trials one epoch at a
time, reports each epoch's validation score in the target metric to Optuna and prunes with
Optuna's pruner (median rule after warm-up). Every trial is a nested MLflow run under the
DAG run's training run. Time is bounded from the deadline, not by a study ``timeout``: a trial
gets another epoch only if that epoch (its slowest so far) ends before ``DEADLINE_ALPHA`` of
the deadline minus the time the export needs, and a new trial starts only if its first epochs
fit; so the study never runs past the deadline. It stops early when a trial reaches the stop
accuracy. The best trial's best weights go on to export, exactly like a training run.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ray_jobs import data_io
from ray_jobs.entry import run_entrypoint

#: Seconds kept at the end of the deadline for exporting and logging the model.
EXPORT_RESERVE_S = 8.0
HIDDEN_CHOICES = ("32", "64", "64-64", "128-64")
#: Keys of a search space's answer that set the contract's own fields (the rest are
#: ``model_params``).
CONTRACT_KEYS = ("learning_rate", "batch_size", "hidden_units")


def suggest(trial: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """One trial's settings: the user's search space (``search_space``, an Optuna
    define-by-run function) or the built-in one (learning rate and batch size, plus hidden
    layers for the mlp). ``model_params`` is the contract's, overlaid with the space's keys
    that are not the contract's fields."""
    target = str(spec.get("search_space") or "")
    if target:
        from ray_jobs.model_format import UserModelError, load_builder

        try:
            drawn = load_builder(target)(trial)
        except UserModelError:
            raise
        except Exception as exc:
            raise UserModelError(
                f"search space {target}(trial) raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(drawn, dict):
            raise UserModelError(
                f"search space {target}(trial) returned {type(drawn).__name__}, not a dict of "
                f"suggested values"
            )
    else:
        drawn = {
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        }
        if spec.get("model", "mlp") == "mlp":
            drawn["hidden_units"] = trial.suggest_categorical("hidden_units", HIDDEN_CHOICES)
    params: dict[str, Any] = {
        "learning_rate": float(spec["learning_rate"]),
        "batch_size": int(spec["batch_size"]),
        "hidden_units": list(spec["hidden_units"]),
        "model_params": dict(spec.get("model_params") or {}),
    }
    for key, value in drawn.items():
        if key not in CONTRACT_KEYS:
            params["model_params"][key] = value
        elif key == "hidden_units":
            params[key] = (
                [int(u) for u in value.split("-")] if isinstance(value, str) else list(value)
            )
        else:
            params[key] = type(params[key])(value)
    return params


class TrialWorker:
    """One trial's model and data, trained an epoch per call (a Ray actor): the contract's
    model (the mlp or the user's builder) with the trial's settings, scored each epoch in the
    target metric."""

    def __init__(self, spec: dict[str, Any], params: dict[str, Any]) -> None:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        from ray_jobs.model_format import compile_model
        from ray_jobs.worker import model_from_config

        self.config = {**spec, **params}
        profile = spec["profile"]
        self.x, self.y = data_io.read_xy(spec["train_path"], profile)
        self.xv, self.yv = data_io.read_xy(spec["val_path"], profile)
        self.batch = int(params["batch_size"])
        self.model = model_from_config(self.config)
        compile_model(
            self.model, profile.get("task", "classification"), float(params["learning_rate"])
        )
        self.best = (-float("inf"), self.model.get_weights())
        self.epoch = 0

    def train_epoch(self) -> dict[str, float]:
        from ray_jobs.worker import validation_scores

        start = time.time()
        self.model.fit(
            self.x,
            self.y,
            batch_size=self.batch,
            epochs=self.epoch + 1,
            initial_epoch=self.epoch,
            verbose=0,
            shuffle=True,
        )
        self.epoch += 1
        score, _ = validation_scores(
            self.config, np.asarray(self.model(self.xv, training=False).numpy()), self.yv
        )
        if score > self.best[0]:
            self.best = (score, self.model.get_weights())
        return {"epoch": self.epoch, "val_accuracy": score, "duration_s": time.time() - start}

    def best_weights(self) -> tuple[float, list[np.ndarray]]:
        return self.best


def run_tuning(spec: dict[str, Any]) -> dict[str, Any]:
    from ray_jobs.worker import check_inputs

    check_inputs(spec)
    import optuna
    import ray
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.tracking import MlflowClient

    from policies import DEADLINE_ALPHA
    from ray_jobs.export import export_and_log

    ray.init(runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1"}})
    started_at = float(spec["started_at"])
    deadline = float(spec["deadline_s"])
    end_by = DEADLINE_ALPHA * deadline - EXPORT_RESERVE_S
    stop_acc = float(spec["stop_accuracy"])
    parallel = max(1, int(spec["num_workers"]))
    max_epochs = int(spec["max_epochs"])
    client = MlflowClient(spec["tracking_uri"])
    parent = spec["mlflow_run_id"]
    exp_id = client.get_run(parent).info.experiment_id
    actor_cls = ray.remote(num_cpus=float(spec["cpus_per_worker"]))(TrialWorker)

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=int(spec["seed"])),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
    )
    active: dict[Any, dict[str, Any]] = {}  # future -> trial record
    trials: list[dict[str, Any]] = []
    first_epoch_s = 5.0  # refined from the first trials' measured first epochs
    stop_reason = "max_trials"
    best_seen: dict[str, Any] = {"acc": -float("inf"), "weights": None, "rec": None}

    def elapsed() -> float:
        return time.time() - started_at

    def start_trial() -> None:
        trial = study.ask()
        params = suggest(trial, spec)
        run = client.create_run(
            exp_id,
            run_name=f"trial {trial.number}",
            tags={"mlflow.parentRunId": parent, "slaflow.trial": str(trial.number)},
        )
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        actor = actor_cls.remote(spec, params)
        rec = {
            "trial": trial,
            "params": params,
            "actor": actor,
            "run_id": run.info.run_id,
            "durations": [],
            "best": -float("inf"),  # a score (rmse's is 1 - rmse: below 0 is possible)
            "epochs": 0,
            "state": "running",
        }
        trials.append(rec)
        active[actor.train_epoch.remote()] = rec

    def finish(rec: dict[str, Any], state: str) -> None:
        rec["state"] = state
        if state == "pruned":
            study.tell(rec["trial"], state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(rec["trial"], rec["best"])
            if rec["best"] > best_seen["acc"]:
                acc, weights = ray.get(rec["actor"].best_weights.remote())
                best_seen.update(acc=acc, weights=weights, rec=rec)
        # The actor gives its CPUs back at once, for the next trial.
        ray.kill(rec["actor"])
        client.set_terminated(
            rec["run_id"],
            RunStatus.to_string(RunStatus.KILLED if state == "pruned" else RunStatus.FINISHED),
        )

    while True:
        # Start trials while there is room, budget and time for a first epoch or two.
        while (
            len(active) < parallel
            and len(trials) < int(spec["tuning_trials"])
            and stop_reason == "max_trials"
            and elapsed() + 10.0 + 2 * first_epoch_s <= end_by
        ):
            start_trial()
        if not active:
            if len(trials) < int(spec["tuning_trials"]) and stop_reason == "max_trials":
                stop_reason = "deadline"
            break
        done, _ = ray.wait(list(active), num_returns=1)
        rec = active.pop(done[0])
        try:
            out = ray.get(done[0])
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            # Its process died (OOM-killed, its node lost): the trial fails, the study goes on
            # with the others and starts another in its place while time allows.
            rec["state"] = "failed"
            study.tell(rec["trial"], state=optuna.trial.TrialState.FAIL)
            client.set_terminated(rec["run_id"], RunStatus.to_string(RunStatus.FAILED))
            print(
                f"[slaflow] trial {rec['trial'].number} lost its actor after "
                f"{rec['epochs']} epoch(s) ({type(exc).__name__}): the study goes on without it",
                flush=True,
            )
            continue
        rec["epochs"] = int(out["epoch"])
        rec["durations"].append(float(out["duration_s"]))
        rec["best"] = max(rec["best"], float(out["val_accuracy"]))
        if rec["epochs"] == 1:
            first_epoch_s = max(first_epoch_s * 0.5, float(out["duration_s"]))
        ts = int(time.time() * 1000)
        client.log_batch(
            rec["run_id"],
            metrics=[
                Metric("val_accuracy", float(out["val_accuracy"]), ts, rec["epochs"]),
                Metric("epoch_seconds", float(out["duration_s"]), ts, rec["epochs"]),
            ],
        )
        rec["trial"].report(float(out["val_accuracy"]), rec["epochs"])
        print(
            f"[slaflow] trial {rec['trial'].number} epoch {rec['epochs']} "
            f"val_{spec.get('target_metric', 'accuracy')}_score={out['val_accuracy']:.4f} "
            f"elapsed={elapsed():.1f}s "
            f"deadline={deadline:g}s parallel={parallel}",
            flush=True,
        )
        if rec["best"] >= stop_acc:
            stop_reason = "target_met"
            finish(rec, "complete")
        elif rec["trial"].should_prune():
            finish(rec, "pruned")
        elif rec["epochs"] >= max_epochs:
            finish(rec, "complete")
        elif elapsed() + max(rec["durations"]) > end_by or stop_reason != "max_trials":
            finish(rec, "complete")  # its time limit: the remaining deadline
            if stop_reason == "max_trials" and elapsed() + max(rec["durations"]) > end_by:
                stop_reason = "deadline"
        else:
            active[rec["actor"].train_epoch.remote()] = rec
            continue
        if stop_reason == "target_met":
            for fut, other in list(active.items()):
                active.pop(fut)  # its actor is killed below; its best so far still counts
                finish(other, "complete")

    finished = [t for t in trials if t["state"] == "complete" and t["epochs"] > 0]
    if best_seen["rec"] is None:
        raise RuntimeError(
            "no tuning trial finished an epoch before the deadline: relax "
            "deadline_s or lower tuning_trials"
        )
    best, best_acc, weights = best_seen["rec"], best_seen["acc"], best_seen["weights"]
    params = best["params"]
    history: list[dict[str, Any]] = [
        {"epoch": i + 1, "val_accuracy": None, "workers": 1, "elapsed_s": None}
        for i in range(best["epochs"])
    ]
    state = {
        "epoch": best["epochs"],
        "best_epoch": best["epochs"],
        "best_val_accuracy": best_acc,
        "stop_reason": None,
        "history": [],
    }
    for m in client.get_metric_history(best["run_id"], "val_accuracy"):
        history[m.step - 1]["val_accuracy"] = m.value
    # JSON-safe (the result is an XCom): no NaN for the losses a trial does not report.
    state["history"] = [
        dict(h, loss=None, accuracy=None, elapsed_s=h["elapsed_s"] or 0.0)
        for h in history
        if h["val_accuracy"] is not None
    ]
    export_spec = {**spec, **params}
    from policies import deadline_met, outcome

    reason = {"target_met": "target_met", "deadline": "deadline_truncated"}.get(
        stop_reason, "max_epochs"
    )
    label = outcome(reason, best_acc, stop_acc)
    training_seconds_pre = elapsed()
    summary = {
        "worker_seconds": sum(sum(t["durations"]) for t in trials) * float(spec["cpus_per_worker"]),
        "resizes": 0,
        "restart_seconds": [],
        "outcome": label.value,
        "segments": [],
    }
    state["stop_reason"] = reason
    model_uri = export_and_log(
        export_spec, weights, state, training_seconds_pre, summary, plots=False
    )
    training_seconds = elapsed()
    client.log_batch(
        parent,
        params=[Param(f"best_{k}", str(v)) for k, v in params.items()],
        metrics=[Metric("tuning_trials", len(trials), int(time.time() * 1000), 0)],
    )
    return {
        **summary,
        "epochs": best["epochs"],
        "best_epoch": best["epochs"],
        "best_val_accuracy": best_acc,
        "stop_reason": reason,
        "history": state["history"],
        "training_seconds": training_seconds,
        "deadline_met": deadline_met(training_seconds, deadline),
        "num_workers": parallel,
        "checkpoint_path": None,
        "resumed_from": None,
        "model_uri": model_uri,
        "tuning": {
            "trials": len(trials),
            "pruned": sum(1 for t in trials if t["state"] == "pruned"),
            "failed": sum(1 for t in trials if t["state"] == "failed"),
            "completed": len(finished),
            "best_params": params,
            "best_trial": best["trial"].number,
        },
    }


if __name__ == "__main__":
    run_entrypoint(run_tuning)
