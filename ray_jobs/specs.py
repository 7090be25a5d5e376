"""The input of every Ray Job, built in one place from the run plan.

Operators (and tests and benchmarks) build specs here and hand them to ``RayJobRunner``,
which writes each as a JSON file on shared storage (``ray_jobs.entry``). A job reads exactly
the keys its builder writes; nothing else assembles a spec.
"""

from __future__ import annotations

from typing import Any

from policies import RunContract
from slaflow import settings


def model_fields(contract: RunContract, data_profile: dict[str, Any]) -> dict[str, Any]:
    """What a training worker needs to build and feed the model: shared by training and the
    throughput calibration, so a calibrated epoch is the epoch training will run."""
    return {
        "profile": data_profile,
        "train_path": data_profile["paths"]["train"],
        "val_path": data_profile["paths"]["val"],
        "hidden_units": list(contract.hidden_units),
        "model": contract.model,
        "model_params": dict(contract.model_params),
        "target_metric": contract.target_metric,
        "learning_rate": contract.learning_rate,
        "batch_size": contract.batch_size,
        "seed": contract.seed,
        "cpus_per_worker": contract.cpus_per_worker,
        # A user's train loop is told how far it may go (its range of epochs).
        "max_epochs": contract.max_epochs,
        # below this size the workers read the split's files themselves (data_io.feed_of)
        "ray_data_min_bytes": settings.ray_data_min_bytes(),
    }


def training_spec(
    contract: RunContract,
    data_profile: dict[str, Any],
    *,
    run_name: str,
    storage_path: str,
    tracking_uri: str,
    mlflow_run_id: str,
    started_at: float,
    stop_accuracy: float,
    num_workers: int,
    throughput: dict[str, Any],
    prior_epochs: int,
) -> dict[str, Any]:
    """Input of ``ray_jobs.train``, ``ray_jobs.tune`` and ``ray_jobs.federated``."""
    spec = {
        **model_fields(contract, data_profile),
        "run_name": run_name,
        "storage_path": storage_path,
        "tracking_uri": tracking_uri,
        "mlflow_run_id": mlflow_run_id,
        "deadline_s": contract.deadline_s,
        "stop_accuracy": stop_accuracy,
        "started_at": started_at,
        "num_workers": num_workers,
        "max_workers": contract.max_workers,
        "resize_policy": contract.resize_policy,
        "on_target_unreachable": contract.on_target_unreachable,
        "throughput": throughput,
        "prior_epochs": prior_epochs,
        "tuning_trials": contract.tuning_trials,
        "search_space": contract.search_space,
    }
    spec.update({k: v for k, v in contract.to_dict().items() if k.startswith("fl_")})
    return spec


def calibration_spec(
    contract: RunContract,
    data_profile: dict[str, Any],
    *,
    key: str,
    shape: str,
    worker_counts: list[int],
    storage_path: str,
    epochs: int = 2,
) -> dict[str, Any]:
    """Input of ``ray_jobs.calibrate``."""
    return {
        **model_fields(contract, data_profile),
        "key": key,
        "shape": shape,
        "worker_counts": worker_counts,
        "epochs": epochs,
        "storage_path": storage_path,
    }


def evaluation_spec(
    data_profile: dict[str, Any],
    *,
    tracking_uri: str,
    mlflow_run_id: str,
    model_uri: str,
    target_metric: str = "accuracy",
) -> dict[str, Any]:
    """Input of ``ray_jobs.evaluate``."""
    return {
        "target_metric": target_metric,
        "tracking_uri": tracking_uri,
        "mlflow_run_id": mlflow_run_id,
        "model_uri": model_uri,
        "test_path": data_profile["paths"]["test"],
    }


def profile_spec(
    *,
    tracking_uri: str,
    model_uri: str,
    variant_uri: str,
    cpus: list[float],
    batches: list[int],
    resource: str,
    gpus: int = 0,
) -> dict[str, Any]:
    """Input of ``ray_jobs.profile_serving`` (``gpus``: 1 measures a one-GPU replica shape
    too, where the cluster has a GPU)."""
    return {
        "tracking_uri": tracking_uri,
        "model_uri": model_uri,
        "variant_uri": variant_uri,
        "cpus": cpus,
        "batches": batches,
        "resource": resource,
        "gpus": gpus,
    }
