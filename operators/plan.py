"""Planning stages, before any training compute: validate the contract once (``plan``) and
say whether it can be met on this cluster (``feasibility``)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from operators.base import RayJobStageOperator, StageOperator, run_key
from policies import (
    ContractError,
    InfeasibleError,
    RunContract,
    RunPlan,
    ThroughputModel,
    assess_feasibility,
    check_data_source,
    cluster_capacity,
    estimate_epochs_needed,
    migrate_contract,
    next_calibration,
    parse_roots,
    plan_workers,
    size_training,
)


def allowed_source(source: str) -> str:
    """``source`` if it lies under a configured data root (``SLAFLOW_DATA_ROOTS``), resolved
    as the workers will open it; else a ``ContractError`` naming ``data_source``. A local path
    is judged after its symlinks are resolved, so a link out of a root is refused."""
    from slaflow.settings import data_roots

    try:
        roots = parse_roots(data_roots())
    except ValueError as exc:  # the setting, not the contract: the admin's fix
        raise AirflowFailException(str(exc)) from exc
    scheme, sep, rest = source.partition("://")
    if source.startswith("/") or (sep and scheme.lower() == "file"):
        source = os.path.realpath(rest if sep else source)
    return check_data_source(source, roots)


class PlanRunOperator(StageOperator):
    """Validate the contract (the only stage that does) and size training before any compute.

    Fails without retry (AirflowFailException) on a bad contract or a cluster too small for
    one worker; the message names the field or resource and the fix, and what served models
    hold. Read-only: retry-safe. Returns the ``RunPlan`` every later stage reads.
    """

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg

        raw = dict(context["params"])
        run_type = str(getattr(context["dag_run"], "run_type", "manual")).lower()
        if "manual" not in run_type:  # scheduled or data-triggered: nobody filled the form
            raw = self._unattended_contract(context, raw, run_type)
        try:
            for note in migrate_contract(raw)[1]:
                self.log.info("%s", note)
            contract = RunContract.from_dict(raw)
            contract = replace(contract, data_source=allowed_source(contract.data_source))
        except ContractError as exc:
            raise AirflowFailException(str(exc)) from exc
        try:
            champion = reg.get_champion(
                self.mlflow.client, contract.model_name, contract.target_metric
            )
        except ValueError as exc:
            raise AirflowFailException(f"contract field 'model_name': {exc}") from exc
        resource = contract.serving_node_resource
        if resource and resource not in self.ray.cluster_resources():
            raise AirflowFailException(
                f"contract field 'serving_node_resource': no node of the Ray cluster at "
                f"{self.ray.endpoints['address']} has resource {resource!r}. Fix: start a node "
                f"with --resources='{{\"{resource}\": 1}}', or leave the field empty"
            )
        free = self.ray.free_cpus()
        serving = self.serve.footprint()
        self.log.info(
            "Ray cluster: %.4g CPUs free; served models hold %.4g CPUs (%s)",
            free,
            serving.cpus,
            serving.describe(),
        )
        try:
            workers = plan_workers(
                contract.max_workers, contract.cpus_per_worker, free, serving=serving
            )
        except InfeasibleError as exc:
            raise AirflowFailException(f"contract infeasible: {exc}") from exc
        plan = RunPlan.make(
            contract,
            run_key=run_key(context),
            champion=champion,
            num_workers=workers.num_workers,
            worker_reason=workers.reason,
        )
        self.log.info(
            "Contract v%s for model %s (%s, task %s): deadline %.0fs, target %s %s %.4g",
            contract.contract_version,
            contract.model_name,
            contract.model,
            contract.task,
            contract.deadline_s,
            contract.target_metric,
            ">=" if contract.quality_metric.higher_is_better else "<=",
            contract.target_value,
        )
        quality = contract.quality_metric
        self.log.info(
            "Champion: %s; training stops early at validation %s %.4g",
            "none"
            if champion is None
            else f"v{champion.version} ({quality.name} {quality.value(champion.accuracy):.4g})",
            quality.name,
            quality.value(plan.stop_accuracy),
        )
        self.log.info("Workers: %s", workers.reason)
        return plan.to_dict()

    def _unattended_contract(
        self, context: Any, raw: dict[str, Any], run_type: str
    ) -> dict[str, Any]:
        """Contract of a scheduled or asset-triggered run: SLAFLOW_RETRAIN_CONTRACT over the
        defaults, and the changed dataset (from the triggering event) as ``data_source``."""
        from slaflow.settings import retrain_contract

        try:
            raw = {**raw, **retrain_contract()}
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        events = context.get("triggering_asset_events") or {}
        for asset_events in events.values():
            for event in asset_events:
                if (event.extra or {}).get("path"):
                    raw["data_source"] = event.extra["path"]
        self.log.info(
            "%s run: contract from SLAFLOW_RETRAIN_CONTRACT and defaults; data %s",
            run_type,
            raw.get("data_source"),
        )
        return raw


class FeasibilityOperator(RayJobStageOperator):
    """Say before any training compute whether the contract can be met, and size training.

    Throughput comes from a calibration measured on this cluster (a short Ray Job, cached in
    MLflow's ``slaflow-calibration`` experiment per cluster and job shape); the epochs needed
    come from the learning curves of past runs of the same model in MLflow. An infeasible
    contract fails here (no retry) with the binding constraint and what to relax, unless the
    contract says ``on_infeasible: best_effort``. Read-only apart from the cache: retry-safe.
    """

    template_fields: Sequence[str] = ("plan", "profile")

    def __init__(self, *, profile: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.profile = profile

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import calibration as cal
        from mlflow_config import registry as reg
        from ray_jobs.specs import calibration_spec
        from slaflow.settings import Endpoints, gpu_price

        contract = self.contract
        if contract.training_mode == "federated":
            return self._federated(contract)
        if contract.training_mode == "spark_mllib":
            return self._not_calibrated(
                f"spark_mllib: checked at the train task against the Spark profile of this "
                f"job (the first run profiles it), on at most {contract.prepare_max_cores} "
                f"cores within {contract.deadline_s:g}s",
                contract.prepare_max_cores,
            )
        total = self.ray.cluster_resources()
        free = self.ray.available_resources()
        serving = self.serve.footprint()
        cpw = contract.cpus_per_worker
        capacity = cluster_capacity(
            free_cpus=free.get("CPU", 0.0), cpus_per_worker=cpw, free_gpus=free.get("GPU", 0.0)
        )
        self.log.info(
            "Capacity for training: %s workers (%.4g CPUs free; served models hold %.4g: %s)",
            capacity,
            free.get("CPU", 0.0),
            serving.cpus,
            serving.describe(),
        )
        parts = {
            "cluster_cpus": total.get("CPU", 0.0),
            "cluster_gpus": total.get("GPU", 0.0),
            "nodes": len(self.ray.alive_nodes()),
            "train_rows": self.profile["split_counts"]["train"],
            "features": len(self.profile["feature_names"]),
            "classes": len(self.profile["classes"]),
            "hidden_units": list(contract.hidden_units),
            "batch_size": contract.batch_size,
            "cpus_per_worker": cpw,
        }
        if contract.model != "mlp":  # another network: another epoch time and curve
            parts.update(model=contract.model, model_params=dict(contract.model_params))
        if contract.target_metric != "accuracy":  # past curves are in the target's score
            parts["target_metric"] = contract.target_metric
        key = cal.calibration_key(**parts)
        client = self.mlflow.client
        curves = cal.past_curves(
            client, reg.experiment_name(contract.model_name), key, contract.learning_rate
        )
        estimate = estimate_epochs_needed(curves, self.run_plan.stop_accuracy, contract.max_epochs)
        models = []
        for shape, fit in capacity.items():
            price = gpu_price() if shape == "gpu" else cpw
            found = cal.find_calibration(client, key, shape)
            model = None if found is None else _throughput(shape, found, price)
            while todo := next_calibration(
                model,
                epochs=estimate.epochs,
                deadline_s=contract.deadline_s,
                max_workers=contract.max_workers,
                capacity=fit,
            ):
                self.log.info(
                    "Calibrating %s workers (%s) on this cluster and job (key %s)%s",
                    todo,
                    shape,
                    key,
                    ""
                    if model is None
                    else ": one worker cannot finish in time, so larger counts matter",
                )
                spec = calibration_spec(
                    contract,
                    self.profile,
                    key=key,
                    shape=shape,
                    worker_counts=todo,
                    storage_path=Endpoints.from_env().ray_storage,
                )
                measured = self.run_job(
                    context,
                    f"calib-{shape}{'-'.join(map(str, todo))}",
                    "ray_jobs.calibrate",
                    spec,
                    timeout_s=900,
                )
                found = cal.merge_calibrations(found, measured)
                cal.save_calibration(client, key, found, self.mlflow.artifact_location, parts)
                found["source"] = "calibration measured now"
                model = _throughput(shape, found, price)
            if model is None:
                continue
            models.append(model)
            self.log.info(
                "Throughput (%s, %s): %s s/epoch by workers, start-up %.1fs",
                shape,
                model.source,
                dict(model.epoch_s),
                model.startup_s,
            )
        if not models:
            raise AirflowFailException(
                f"contract infeasible: not one training worker of {cpw:g} CPUs fits now "
                f"({free.get('CPU', 0.0):.4g} free; served models hold {serving.cpus:g}: "
                f"{serving.describe()}). Fix: `make undeploy MODEL=<name>`, add nodes, or "
                f"lower cpus_per_worker"
            )
        verdict = assess_feasibility(
            deadline_s=contract.deadline_s,
            elapsed_s=0.0,
            max_workers=contract.max_workers,
            capacity=capacity,
            models=models,
            estimate=estimate,
            now_unix=time.time(),
        )
        self.log.info("Feasibility: %s", verdict.message)
        for hint in verdict.suggestions:
            self.log.info("  to meet it: %s", hint)
        if not verdict.feasible:
            if contract.on_infeasible == "fail":
                raise AirflowFailException(
                    f"contract infeasible ({verdict.binding}): {verdict.message}. Fix: "
                    + "; or ".join(verdict.suggestions)
                    + ". Or set on_infeasible to best_effort to train anyway"
                )
            self.log.warning("on_infeasible=best_effort: training anyway on the fastest plan")
        model = next(m for m in models if m.shape == verdict.shape)
        size = size_training(
            feasible=verdict.feasible,
            planned_workers=verdict.workers,
            max_workers=contract.max_workers,
            capacity=capacity[model.shape],
            resize_policy=contract.resize_policy,
        )
        self.log.info(
            "Training starts with %d %s workers: %s", size.workers, model.shape, size.reason
        )
        return {
            "verdict": verdict.to_dict(),
            "calibration_key": key,
            "num_workers": size.workers,
            "max_usable_workers": size.usable,
            "shape": model.shape,
            "prior_epochs": estimate.epochs,
            "epochs_source": estimate.source,
            "past_runs": len(curves),
            "throughput": {
                "shape": model.shape,
                "epoch_s": {str(n): t for n, t in model.epoch_s.items()},
                "startup_s": model.startup_s,
                "source": model.source,
            },
            "predicted_training_s": verdict.predicted_training_s
            if math.isfinite(verdict.predicted_training_s)
            else None,
        }

    def _federated(self, contract: RunContract) -> dict[str, Any]:
        """Federated runs are bounded by rounds (and participations) and the deadline, and
        the job stops a round early that would cross it; no calibration is measured."""
        message = (
            f"federated: at most {contract.fl_rounds} rounds of "
            f"{contract.fl_clients_per_round} of {contract.fl_clients} clients"
            + (
                f", {contract.fl_network_budget} participations"
                if contract.fl_network_budget
                else ""
            )
            + f", within {contract.deadline_s:g}s; not calibrated (rounds stop at the "
            "deadline)"
        )
        return self._not_calibrated(message, contract.fl_clients_per_round)

    def _not_calibrated(self, message: str, workers: int) -> dict[str, Any]:
        self.log.info("Feasibility: %s", message)
        return {
            "verdict": {"status": "not_assessed", "feasible": True, "message": message},
            "calibration_key": "",
            "num_workers": workers,
            "max_usable_workers": workers,
            "shape": "cpu",
            "prior_epochs": 0,
            "epochs_source": "none",
            "past_runs": 0,
            "throughput": {"shape": "cpu", "epoch_s": {}, "startup_s": 0.0, "source": "none"},
            "predicted_training_s": None,
        }


def _throughput(shape: str, found: dict[str, Any], price: float) -> ThroughputModel:
    return ThroughputModel(
        shape,
        {int(n): float(t) for n, t in found["epoch_s"].items()},
        float(found["startup_s"]),
        price,
        str(found.get("source", "")),
    )
