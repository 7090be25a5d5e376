"""Ray Job: federated training (FedAvg) with hyperFL's control of local epochs.

Clients are Ray actors, each holding a non-IID shard of the training data (a Dirichlet split
over labels). Every round the driver samples clients (``policies.select_clients``), sends the
global weights and the round's local epochs E (``policies.next_round``: linear, quadratic or
static), waits up to the round timeout, and averages the answers weighted by samples (FedAvg).
A client that dies or misses the timeout is left out of that round; Ray restarts a dead actor
with its shard for later rounds. After each round: validation accuracy of the global model,
metrics to MLflow (accuracy, E, participants, participations, client-epochs) and a checkpoint
(global and best weights + history) that a resubmitted job resumes from, so an Airflow retry
loses no finished round. The best global model is exported exactly like a training run's.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np

from ray_jobs import data_io
from ray_jobs.entry import run_entrypoint

CHECKPOINT_DIR = "federated"


def dirichlet_partition(
    labels: np.ndarray, n_clients: int, alpha: float, seed: int, min_size: int = 4
) -> list[np.ndarray]:
    """Row indices per client: for each label, shares drawn from Dirichlet(alpha).

    Small alpha gives each client a few labels (non-IID); large alpha is close to IID. Draws
    again (up to 50 times) until every client holds at least ``min_size`` rows.
    """
    if n_clients * min_size > len(labels):
        raise ValueError(
            f"{len(labels)} training rows cannot give {n_clients} clients "
            f"{min_size} rows each: lower fl_clients"
        )
    rng = np.random.default_rng(seed)
    for _ in range(50):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for label in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.array(sorted(p), dtype=np.int64) for p in parts]
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split gave every one of {n_clients} clients "
        f"{min_size} rows: raise fl_dirichlet_alpha or lower fl_clients"
    )


class FederatedClient:
    """One client: its shard, a local model, E local epochs per call (a Ray actor)."""

    def __init__(self, spec: dict[str, Any], client_id: int, indices: list[int]) -> None:
        import os

        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        from ray_jobs.model_format import build_mlp, tf_keras

        keras = tf_keras()
        profile = spec["profile"]
        x, y = data_io.read_xy(spec["train_path"], profile)
        self.client_id = client_id
        self.x, self.y = x[indices], y[indices]
        self.batch = int(spec["batch_size"])
        self.model = build_mlp(
            len(profile["feature_names"]),
            len(profile["classes"]),
            spec["hidden_units"],
            profile["feature_mean"],
            profile["feature_std"],
            int(spec["seed"]) + client_id,
        )
        self.model.compile(
            optimizer=keras.optimizers.Adam(float(spec["learning_rate"])),
            loss="sparse_categorical_crossentropy",
        )

    def train(self, weights: list[np.ndarray], epochs: int, round_no: int) -> dict[str, Any]:
        started = time.time()
        self.model.set_weights(weights)
        # A fresh optimizer state every round (FedAvg's local SGD starts from the global
        # model); zeroing the variables keeps the compiled train function (no retrace).
        for var in self.model.optimizer.variables():
            var.assign(np.zeros(var.shape, dtype=var.dtype.as_numpy_dtype))
        hist = self.model.fit(
            self.x, self.y, batch_size=self.batch, epochs=int(epochs), verbose=0, shuffle=True
        )
        return {
            "client": self.client_id,
            "weights": self.model.get_weights(),
            "samples": len(self.y),
            "loss": float(hist.history["loss"][-1]),
            "seconds": time.time() - started,
            "round": round_no,
        }

    def labels(self) -> dict[int, int]:
        values, counts = np.unique(self.y, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def _fs(storage_path: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in storage_path:
        fs, root = pafs.FileSystem.from_uri(storage_path)
        return fs, root
    return pafs.LocalFileSystem(), storage_path


def _npz_bytes(weights: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, *weights)
    return buf.getvalue()


def _npz_load(data: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(data)) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


def save_round(
    storage_path: str,
    run_name: str,
    state: dict[str, Any],
    global_weights: list[np.ndarray],
    best_weights: list[np.ndarray],
) -> str:
    """Checkpoint after a round: weights first, the state file last (it marks it complete)."""
    fs, root = _fs(storage_path)
    folder = f"{root.rstrip('/')}/{run_name}/{CHECKPOINT_DIR}/round_{state['round']:05d}"
    fs.create_dir(folder, recursive=True)
    for name, weights in (("global.npz", global_weights), ("best.npz", best_weights)):
        with fs.open_output_stream(f"{folder}/{name}") as fh:
            fh.write(_npz_bytes(weights))
    with fs.open_output_stream(f"{folder}/state.json") as fh:
        fh.write(json.dumps(state).encode())
    return folder


def load_latest_round(
    storage_path: str, run_name: str
) -> tuple[dict[str, Any], list[np.ndarray], list[np.ndarray]] | None:
    """The newest complete round checkpoint of this run, or None."""
    import pyarrow.fs as pafs

    fs, root = _fs(storage_path)
    base = f"{root.rstrip('/')}/{run_name}/{CHECKPOINT_DIR}"
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=False))
    except (FileNotFoundError, OSError):
        return None
    for info in sorted(
        (i for i in infos if i.base_name.startswith("round_")),
        key=lambda i: i.base_name,
        reverse=True,
    ):
        try:
            with fs.open_input_stream(f"{info.path}/state.json") as fh:
                state = json.loads(fh.read())
            with fs.open_input_stream(f"{info.path}/global.npz") as fh:
                global_w = _npz_load(fh.read())
            with fs.open_input_stream(f"{info.path}/best.npz") as fh:
                best_w = _npz_load(fh.read())
        except (FileNotFoundError, OSError, ValueError):
            continue  # cut off mid-write: not trusted
        return state, global_w, best_w
    return None


class Federation:
    """The driver's side: clients, the global model, rounds under the policy."""

    def __init__(self, spec: dict[str, Any], clients: dict[int, Any]) -> None:
        from ray_jobs.model_format import build_mlp

        profile = spec["profile"]
        self.spec = spec
        self.clients = clients
        self.xv, self.yv = data_io.read_xy(spec["val_path"], profile)
        self.model = build_mlp(
            len(profile["feature_names"]),
            len(profile["classes"]),
            spec["hidden_units"],
            profile["feature_mean"],
            profile["feature_std"],
            int(spec["seed"]),
        )
        self.busy: dict[int, Any] = {}  # client -> a timed-out call still running

    def accuracy(self, weights: list[np.ndarray]) -> float:
        self.model.set_weights(weights)
        pred = np.argmax(self.model(self.xv, training=False).numpy(), axis=1)
        return float(np.mean(pred == self.yv))

    def _free_clients(self) -> list[int]:
        import ray

        for cid, ref in list(self.busy.items()):
            ready, _ = ray.wait([ref], timeout=0)
            if ready:
                self.busy.pop(cid)
        return [c for c in self.clients if c not in self.busy]

    def round(
        self,
        weights: list[np.ndarray],
        epochs: int,
        round_no: int,
        per_round: int,
        timeout_s: float,
    ) -> dict[str, Any]:
        """One FedAvg round; returns the new weights and who took part."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        from policies import fedavg_coefficients, select_clients

        chosen = select_clients(self._free_clients(), per_round, int(self.spec["seed"]), round_no)
        if not chosen:  # every client is still busy with a late call: skip this round
            return {
                "weights": weights,
                "chosen": [],
                "participants": [],
                "failed": [],
                "late": [],
                "client_seconds": 0.0,
            }
        weights_ref = ray.put(weights)
        calls = {self.clients[c].train.remote(weights_ref, epochs, round_no): c for c in chosen}
        ready, late = ray.wait(list(calls), num_returns=len(calls), timeout=timeout_s)
        answers, failed = [], []
        for ref in ready:
            try:
                answers.append(ray.get(ref))
            except RayActorError as exc:  # its process died, or is being restarted by Ray
                failed.append({"client": calls[ref], "kind": "died", "error": type(exc).__name__})
            except (RayTaskError, GetTimeoutError) as exc:  # its training raised
                failed.append(
                    {
                        "client": calls[ref],
                        "kind": "error",
                        "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                    }
                )
        for ref in late:
            self.busy[calls[ref]] = ref  # not chosen again until this call ends
        if answers:
            coef = fedavg_coefficients([a["samples"] for a in answers])
            weights = [
                sum(c * a["weights"][i] for c, a in zip(coef, answers, strict=True))
                for i in range(len(weights))
            ]
        return {
            "weights": weights,
            "chosen": chosen,
            "participants": [a["client"] for a in answers],
            "failed": failed,
            "late": [calls[r] for r in late],
            "client_seconds": sum(a["seconds"] for a in answers),
        }


def train_federated(
    spec: dict[str, Any],
    federation: Federation,
    resume: tuple[dict[str, Any], list[np.ndarray], list[np.ndarray]] | None = None,
    on_round: Any = None,
    checkpoint: bool = True,
) -> dict[str, Any]:
    """Rounds until the policy stops; returns the state and the best global weights."""
    from policies import EpochStrategy, FederatedBudget, RoundRecord, client_epochs, next_round

    spec = federation.spec
    started_at = float(spec["started_at"])
    budget = FederatedBudget(
        rounds=int(spec["fl_rounds"]),
        clients_per_round=int(spec["fl_clients_per_round"]),
        network_budget=int(spec.get("fl_network_budget", 0)),
        max_local_epochs=int(spec["fl_max_local_epochs"]),
    )
    strategy = EpochStrategy(spec["fl_strategy"])
    target = float(spec["stop_accuracy"])
    if resume is not None:
        state, weights, best_weights = resume
        print(f"[slaflow] resuming federated training after round {state['round']}", flush=True)
    else:
        weights = federation.model.get_weights()
        acc0 = federation.accuracy(weights)
        best_weights = weights
        state = {
            "round": 0,
            "records": [
                {"round": 0, "local_epochs": 0, "accuracy": acc0, "participants": 0, "seconds": 0.0}
            ],
            "history": [],
            "best_val_accuracy": acc0,
            "best_round": 0,
            "stop_reason": None,
            "left_out": [],
        }
    while True:
        records = [RoundRecord(**r) for r in state["records"]]
        decision = next_round(
            strategy=strategy,
            history=records,
            target=target,
            budget=budget,
            static_epochs=int(spec["fl_local_epochs"]),
            now_s=time.time() - started_at,
            deadline_s=float(spec["deadline_s"]),
        )
        if decision.stop:
            state["stop_reason"] = decision.stop_reason.value if decision.stop_reason else None
            print(
                f"[slaflow] federated: stop after round {state['round']}: {decision.message}",
                flush=True,
            )
            break
        round_no = state["round"] + 1
        t0 = time.time()
        out = federation.round(
            weights,
            decision.local_epochs,
            round_no,
            budget.clients_per_round,
            float(spec["fl_round_timeout_s"]),
        )
        weights = out["weights"]
        acc = federation.accuracy(weights)
        seconds = time.time() - t0
        rec = {
            "round": round_no,
            "local_epochs": decision.local_epochs,
            "accuracy": acc,
            "participants": len(out["participants"]),
            "seconds": seconds,
        }
        state["records"].append(rec)
        state["round"] = round_no
        if acc > state["best_val_accuracy"]:
            state["best_val_accuracy"], state["best_round"] = acc, round_no
            best_weights = weights
        if out["failed"] or out["late"]:
            state["left_out"].append(
                {"round": round_no, "failed": out["failed"], "late": out["late"]}
            )
        done = [RoundRecord(**r) for r in state["records"]]
        elapsed = time.time() - started_at
        row = {
            "epoch": round_no,
            "round": round_no,
            "val_accuracy": acc,
            "local_epochs": decision.local_epochs,
            "participants": rec["participants"],
            "participations": sum(r.participants for r in done),
            "client_epochs": client_epochs(done),
            "round_seconds": seconds,
            "elapsed_s": elapsed,
            "workers": rec["participants"],
            "wanted_accuracy": decision.wanted_accuracy,
        }
        state["history"].append(row)
        print(
            f"[slaflow] round {round_no}/{budget.rounds} E={decision.local_epochs} "
            f"clients={out['participants']} val_acc={acc:.4f} target={target:.4f} "
            f"client_epochs={row['client_epochs']} elapsed={elapsed:.1f}s "
            f"deadline={float(spec['deadline_s']):g}s"
            + (
                f" left_out={[f['client'] for f in out['failed']] + out['late']}"
                if out["failed"] or out["late"]
                else ""
            )
            + f" ({decision.message})",
            flush=True,
        )
        if on_round is not None:
            on_round(row)
        if checkpoint:
            save_round(spec["storage_path"], spec["run_name"], state, weights, best_weights)
    return {"state": state, "best_weights": best_weights}


def _log_round(client: Any, run_id: str, row: dict[str, Any]) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    keys = (
        "val_accuracy",
        "local_epochs",
        "participants",
        "participations",
        "client_epochs",
        "round_seconds",
        "elapsed_s",
        "wanted_accuracy",
    )
    client.log_batch(
        run_id,
        metrics=[
            Metric(k, float(row[k]), ts, row["round"]) for k in keys if row.get(k) is not None
        ],
    )


def federated_plot(state: dict[str, Any], target: float) -> Any:
    """Accuracy per round vs target, and the local epochs chosen per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = state["records"]
    fig, (a_ax, e_ax) = plt.subplots(1, 2, figsize=(11, 4))
    a_ax.plot(
        [r["round"] for r in recs],
        [r["accuracy"] for r in recs],
        marker="o",
        label="global val accuracy",
    )
    a_ax.axhline(target, color="red", linestyle="--", label="target")
    a_ax.set(xlabel="round", ylabel="accuracy", title="Accuracy per round")
    a_ax.legend()
    e_ax.bar([r["round"] for r in recs[1:]], [r["local_epochs"] for r in recs[1:]])
    e_ax.set(xlabel="round", ylabel="local epochs (E)", title="Local epochs chosen")
    fig.tight_layout()
    return fig


def make_clients(spec: dict[str, Any], shards: list[np.ndarray]) -> dict[int, Any]:
    """One actor per client, with a share of the budget's CPUs; restarted with its shard."""
    import ray

    cpus = max(0.01, float(spec["max_workers"]) * float(spec["cpus_per_worker"]) / len(shards))
    actor = ray.remote(num_cpus=cpus, max_restarts=2, max_task_retries=0)(FederatedClient)
    return {i: actor.remote(spec, i, shard.tolist()) for i, shard in enumerate(shards)}


def run_federated(spec: dict[str, Any]) -> dict[str, Any]:
    import ray
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from policies import deadline_met, outcome
    from ray_jobs.export import export_and_log

    ray.init(runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1"}})
    client = MlflowClient(spec["tracking_uri"])
    run_id = spec["mlflow_run_id"]
    resume = load_latest_round(spec["storage_path"], spec["run_name"])
    resumed_from = resume[0]["round"] if resume else None  # (training mutates the state)
    _, y = data_io.read_xy(spec["train_path"], spec["profile"]["feature_names"])
    shards = dirichlet_partition(
        y, int(spec["fl_clients"]), float(spec["fl_dirichlet_alpha"]), int(spec["seed"])
    )
    if resume is None:
        sizes = {str(i): int(len(s)) for i, s in enumerate(shards)}
        labels = {
            str(i): {
                int(v): int(c) for v, c in zip(*np.unique(y[s], return_counts=True), strict=True)
            }
            for i, s in enumerate(shards)
        }
        client.log_dict(run_id, {"rows": sizes, "labels": labels}, "federated/shards.json")
        print(
            f"[slaflow] federated: {len(shards)} clients, rows per client {sizes} "
            f"(Dirichlet alpha {spec['fl_dirichlet_alpha']})",
            flush=True,
        )
    clients = make_clients(spec, shards)
    federation = Federation(spec, clients)
    result = train_federated(
        spec, federation, resume, on_round=lambda row: _log_round(client, run_id, row)
    )
    state, best = result["state"], result["best_weights"]
    for handle in clients.values():
        ray.kill(handle)
    if state["round"] == 0:  # nothing trained: an untrained model must not reach the registry
        raise RuntimeError(
            f"no federated round finished ({state['stop_reason']}): "
            f"{time.time() - float(spec['started_at']):.0f}s of the {spec['deadline_s']:g}s "
            f"deadline went to starting {len(clients)} clients and round 0; relax deadline_s "
            f"or use fewer fl_clients"
        )
    stop_acc = float(spec["stop_accuracy"])
    label = outcome(state["stop_reason"], state["best_val_accuracy"], stop_acc)
    records = state["records"]
    client_seconds = sum(r["seconds"] * r["participants"] for r in records)
    summary = {
        "worker_seconds": client_seconds,
        "resizes": 0,
        "restart_seconds": [],
        "outcome": label.value,
        "segments": [],
    }
    export_state = {
        "epoch": state["round"],
        "best_epoch": state["best_round"],
        "best_val_accuracy": state["best_val_accuracy"],
        "stop_reason": state["stop_reason"],
        "history": state["history"],
    }
    training_seconds = time.time() - float(spec["started_at"])
    model_uri = export_and_log(spec, best, export_state, training_seconds, summary, plots=False)
    participations = sum(r["participants"] for r in records)
    epochs_total = sum(r["local_epochs"] * r["participants"] for r in records)
    client.log_figure(run_id, federated_plot(state, stop_acc), "federated/rounds.png")
    client.log_dict(run_id, state, "federated/rounds.json")
    client.log_batch(
        run_id,
        metrics=[
            Metric("fl_rounds_done", state["round"], int(time.time() * 1000), 0),
            Metric("fl_participations", participations, int(time.time() * 1000), 0),
            Metric("fl_client_epochs", epochs_total, int(time.time() * 1000), 0),
        ],
    )
    return {
        **summary,
        "epochs": state["round"],
        "best_epoch": state["best_round"],
        "best_val_accuracy": state["best_val_accuracy"],
        "stop_reason": state["stop_reason"],
        "history": state["history"],
        "training_seconds": training_seconds,
        "deadline_met": deadline_met(training_seconds, float(spec["deadline_s"])),
        "num_workers": int(spec["fl_clients_per_round"]),
        "checkpoint_path": None,
        "resumed_from": resumed_from,
        "model_uri": model_uri,
        "federated": {
            "rounds": state["round"],
            "participations": participations,
            "client_epochs": epochs_total,
            "strategy": spec["fl_strategy"],
            "local_epochs": [r["local_epochs"] for r in records[1:]],
            "left_out": state["left_out"],
            "clients": len(shards),
        },
    }


if __name__ == "__main__":
    run_entrypoint(run_federated)
