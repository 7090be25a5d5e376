"""Operators of the ``ml_lifecycle`` DAG: thin adapters from policies to engines.

Each stage is one operator; inputs arrive as templated XComs (the DAG renders templates as
native objects), outputs are small JSON-able dicts. Decisions come from ``policies``; clients
come from ``operators.hooks``; each ``execute`` is safe to retry (see each docstring).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from operators.hooks import MlflowHook, RayHook, SparkHook
from operators.links import MlflowRunLink, ModelVersionLink, RayDashboardLink, ServeEndpointLink
from operators.ray_job import RayJobFailed, RayJobRunner, submission_base_id
from policies import (
    CHAMPION,
    ContractError,
    InfeasibleError,
    PromotionDecision,
    ReviewOutcome,
    ReviewRequest,
    RunContract,
    decide_promotion,
    final_decision,
    plan_workers,
    required_accuracy,
    review_request,
)


def _contract(plan: dict[str, Any]) -> RunContract:
    return RunContract.from_dict(plan["contract"])


def _run_key(context: Any) -> str:
    return submission_base_id("run", context["dag"].dag_id, context["run_id"])


def _stage_label(context: Any, task_id: str) -> str:
    ids = list(context["dag"].task_ids)
    k = ids.index(task_id) + 1 if task_id in ids else 0
    return f"{context['dag'].dag_id} stage {k}/{len(ids)} {task_id}"


class _StageOperator(BaseOperator):
    """Common parameters: which connections to use."""

    ui_color = "#e8f1fb"

    def __init__(self, *, ray_conn_id: str = "slaflow_ray",
                 mlflow_conn_id: str = "slaflow_mlflow", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ray_conn_id = ray_conn_id
        self.mlflow_conn_id = mlflow_conn_id

    def pre_execute(self, context: Any) -> None:
        self._stage_started = time.monotonic()
        self.log.info("[progress] %s", _stage_label(context, self.task_id) + " started")

    def post_execute(self, context: Any, result: Any = None) -> None:
        took = time.monotonic() - getattr(self, "_stage_started", time.monotonic())
        self.log.info("[progress] %s", _stage_label(context, self.task_id) +
                      f" done in {took:.1f}s")

    @property
    def ray(self) -> RayHook:
        if not hasattr(self, "_ray_hook"):
            self._ray_hook = RayHook(self.ray_conn_id)
        return self._ray_hook

    @property
    def mlflow(self) -> MlflowHook:
        if not hasattr(self, "_mlflow_hook"):
            self._mlflow_hook = MlflowHook(self.mlflow_conn_id)
        return self._mlflow_hook


class _RayJobStageOperator(_StageOperator):
    """A stage whose work runs as a Ray Job: submit-or-attach, stream logs, stop on kill."""

    def run_job(self, context: Any, stage: str, module: str, spec: dict[str, Any],
                timeout_s: float) -> dict[str, Any]:
        self._runner = RayJobRunner(self.ray.job_client, self.log.info)
        base_id = submission_base_id(stage, context["dag"].dag_id, context["run_id"])
        try:
            return self._runner.run(base_id=base_id, module=module, spec=spec,
                                    timeout_s=timeout_s)
        except RayJobFailed as exc:
            raise RuntimeError(str(exc)) from exc  # retryable: the next try attaches/resumes

    def on_kill(self) -> None:
        runner = getattr(self, "_runner", None)
        if runner is not None and getattr(runner, "last_submission_id", None):
            runner.stop(runner.last_submission_id)


class PlanRunOperator(_StageOperator):
    """Validate the contract and size training before any compute is spent.

    Fails without retry (AirflowFailException) on a bad contract or a cluster too small for
    one worker; the message names the field or resource and the fix. Read-only: retry-safe.
    """

    def execute(self, context: Any) -> dict[str, Any]:
        raw = dict(context["params"])
        run_type = str(getattr(context["dag_run"], "run_type", "manual")).lower()
        if "manual" not in run_type:  # scheduled or data-triggered: nobody filled the form
            raw = self._unattended_contract(context, raw, run_type)
        try:
            contract = RunContract.from_dict(raw)
        except ContractError as exc:
            raise AirflowFailException(str(exc)) from exc
        from mlflow_config.registry import get_champion

        champion = get_champion(self.mlflow.client, contract.model_name)
        stop_accuracy = min(0.999, contract.stop_margin + required_accuracy(
            contract.target_accuracy, contract.min_gain_over_champion, champion))
        ray = self.ray.connect()
        resource = contract.serving_node_resource
        if resource and resource not in ray.cluster_resources():
            raise AirflowFailException(
                f"contract field 'serving_node_resource': no node of the Ray cluster at "
                f"{self.ray.endpoints['address']} has resource {resource!r}. Fix: start a node "
                f"with --resources='{{\"{resource}\": 1}}', or leave the field empty")
        free = self.ray.free_cpus()
        try:
            workers = plan_workers(contract.max_workers, contract.cpus_per_worker, free)
        except InfeasibleError as exc:
            raise AirflowFailException(f"contract infeasible: {exc}") from exc
        self.log.info("Contract v%s for model %s: deadline %.0fs, target accuracy %.4f",
                      contract.contract_version, contract.model_name, contract.deadline_s,
                      contract.target_accuracy)
        self.log.info("Champion: %s; training stops early at val accuracy %.4f",
                      "none" if champion is None else
                      f"v{champion.version} ({champion.accuracy:.4f})", stop_accuracy)
        self.log.info("Workers: %s", workers.reason)
        return {
            "contract": contract.to_dict(),
            "run_key": _run_key(context),
            "num_workers": workers.num_workers,
            "cpus_per_worker": workers.cpus_per_worker,
            "worker_reason": workers.reason,
            "champion": None if champion is None else
            {"version": champion.version, "accuracy": champion.accuracy},
            "stop_accuracy": stop_accuracy,
        }


    def _unattended_contract(self, context: Any, raw: dict[str, Any],
                             run_type: str) -> dict[str, Any]:
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
        self.log.info("%s run: contract from SLAFLOW_RETRAIN_CONTRACT and defaults; data %s",
                      run_type, raw.get("data_source"))
        return raw


class PrepareDataOperator(_StageOperator):
    """Spark job: validate, split and write Parquet under ``SLAFLOW_DATA_DIR/<run key>``.

    Writes with mode overwrite into a folder owned by this DAG run: a retry redoes it whole.
    """

    template_fields: Sequence[str] = ("plan",)

    def __init__(self, *, plan: Any, spark_conn_id: str = "slaflow_spark", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self.spark_conn_id = spark_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from slaflow.settings import Endpoints, home
        from spark_jobs.deadline import SparkDeadlineInfeasible, run_with_deadline
        from spark_jobs.prepare import DataError, run_prepare

        contract = _contract(self.plan)
        hook = SparkHook(self.spark_conn_id)
        master = contract.spark_master or hook.master
        output = f"{Endpoints.from_env().data_dir.rstrip('/')}/{self.plan['run_key']}"
        controlled = contract.prepare_deadline_s > 0
        self.log.info("Preparing %s on Spark master %s -> %s%s", contract.data_source,
                      master, output,
                      f" (deadline {contract.prepare_deadline_s:g}s, at most "
                      f"{contract.prepare_max_cores} cores)" if controlled else "")
        conf = _controlled_spark_conf(contract, master) if controlled else {}
        spark = hook.session(f"slaflow-prepare-{self.plan['run_key']}", master=master,
                             conf=conf)
        started = time.monotonic()

        def work() -> dict[str, Any]:
            return run_prepare(
                spark, source=contract.data_source, label_column=contract.label_column,
                output_dir=output, validation_fraction=contract.validation_fraction,
                test_fraction=contract.test_fraction, seed=contract.seed,
                cache_dir=home() / "datasets",
            )

        try:
            if not controlled:
                profile = work()
            else:
                profile, report = run_with_deadline(
                    spark, work, deadline_s=contract.prepare_deadline_s,
                    max_cores=contract.prepare_max_cores,
                    profile_path=_spark_profile_path("prepare", contract, master),
                    on_infeasible=contract.on_infeasible, log=self.log.info)
                report["timeline"] = report.get("timeline", [])[-50:]
                profile["spark_deadline"] = report
                (self.log.info if report["met"] else self.log.warning)(
                    "Spark deadline (%s): finished in %.1fs of %.1fs, %.1f core-seconds, %s",
                    report["mode"], report["elapsed_s"], contract.prepare_deadline_s,
                    report["core_seconds"], "met" if report["met"] else "MISSED")
        except DataError as exc:
            raise AirflowFailException(f"data rejected: {exc}") from exc
        except SparkDeadlineInfeasible as exc:
            raise AirflowFailException(
                f"contract field 'prepare_deadline_s': {exc} (or set on_infeasible to "
                f"best_effort to prepare on all prepare_max_cores anyway)") from exc
        profile["prepare_seconds"] = time.monotonic() - started
        self.log.info("Rows read %d (dropped incomplete: %d, malformed: %d); split %s; "
                      "%d features, %d classes", profile["rows_read"],
                      profile["rows_dropped_incomplete"], profile["rows_dropped_malformed"],
                      profile["split_counts"], len(profile["feature_names"]),
                      len(profile["classes"]))
        if profile["rows_dropped_malformed"]:
            self.log.warning("Malformed values (unparsable numbers) per column: %s; their rows "
                             "were dropped", profile["malformed_values_by_column"])
        return profile


MLLIB_RESULT_TAG = "slaflow.mllib_result"


def _controlled_spark_conf(contract: RunContract, master: str) -> dict[str, str]:
    """One-core executors, so the deadline controller can move the cores one at a time (a
    ``local`` master has fixed cores: nothing to set)."""
    if master.startswith("local"):
        return {}
    return {"spark.executor.cores": "1", "spark.dynamicAllocation.enabled": "false",
            "spark.cores.max": str(contract.prepare_max_cores)}


def _spark_profile_path(job: str, contract: RunContract, master: str) -> Path:
    """Where the stored Spark profile of ``job`` on this data, split and master lives (a
    changed data file is profiled again)."""
    import hashlib

    from slaflow.settings import home

    source = contract.data_source
    stamp: list[Any] = []
    local = source[len("file://"):] if source.startswith("file://") else source
    if "://" not in local and os.path.exists(local):
        st = os.stat(local)
        stamp = [st.st_size, st.st_mtime_ns]
    blob = json.dumps([source, stamp, contract.label_column, contract.validation_fraction,
                       contract.test_fraction, contract.seed, master])
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return home() / "spark_profiles" / f"{job}-{digest}.json"


class FeasibilityOperator(_RayJobStageOperator):
    """Say before any training compute whether the contract can be met, and size training.

    Throughput comes from a calibration measured on this cluster (a short Ray Job, cached in
    MLflow's ``slaflow-calibration`` experiment per cluster and job shape); the epochs needed
    come from the learning curves of past runs of the same model in MLflow. An infeasible
    contract fails here (no retry) with the binding constraint and what to relax, unless the
    contract says ``on_infeasible: best_effort``. Read-only apart from the cache: retry-safe.
    """

    template_fields: Sequence[str] = ("plan", "profile")

    def __init__(self, *, plan: Any, profile: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan, self.profile = plan, profile

    def execute(self, context: Any) -> dict[str, Any]:
        import math
        import os

        from mlflow_config import calibration as cal
        from mlflow_config import registry as reg
        from policies import ThroughputModel, assess_feasibility, estimate_epochs_needed
        from slaflow.settings import Endpoints

        contract = _contract(self.plan)
        if contract.training_mode == "federated":
            return self._federated(contract)
        if contract.training_mode == "spark_mllib":
            return self._not_calibrated(
                f"spark_mllib: checked at the train task against the Spark profile of this "
                f"job (the first run profiles it), on at most {contract.prepare_max_cores} "
                f"cores within {contract.deadline_s:g}s", contract.prepare_max_cores)
        ray = self.ray.connect()
        total = ray.cluster_resources()
        cpw = contract.cpus_per_worker
        capacity = {"cpu": int(self.ray.free_cpus() // cpw + 1e-9)}
        gpus_free = int(ray.available_resources().get("GPU", 0.0))
        if gpus_free >= 1:
            capacity["gpu"] = min(gpus_free, capacity["cpu"])
        parts = {
            "cluster_cpus": total.get("CPU", 0.0), "cluster_gpus": total.get("GPU", 0.0),
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "train_rows": self.profile["split_counts"]["train"],
            "features": len(self.profile["feature_names"]),
            "classes": len(self.profile["classes"]), "hidden_units": list(contract.hidden_units),
            "batch_size": contract.batch_size, "cpus_per_worker": cpw,
        }
        key = cal.calibration_key(**parts)
        client = self.mlflow.client
        models = []
        for shape in capacity:
            sizes = sorted({1, min(2, contract.max_workers, capacity[shape]),
                            min(contract.max_workers, capacity[shape])} - {0})
            if not sizes:
                continue
            found = cal.find_calibration(client, key, shape)
            if found is None:
                self.log.info("No calibration for this cluster and job (key %s, %s): measuring "
                              "%s workers", key, shape, sizes)
                spec = {**self._worker_spec(contract), "key": key, "shape": shape,
                        "worker_counts": sizes, "epochs": 2,
                        "storage_path": Endpoints.from_env().ray_storage}
                found = self.run_job(context, f"calib-{shape}", "ray_jobs.calibrate", spec,
                                     timeout_s=900)
                cal.save_calibration(client, key, found, self.mlflow.artifact_location, parts)
                found["source"] = "calibration measured now"
            price = float(os.environ.get("SLAFLOW_GPU_PRICE", "8")) if shape == "gpu" else cpw
            models.append(ThroughputModel(shape, {int(n): float(t) for n, t in
                                                  found["epoch_s"].items()},
                                          float(found["startup_s"]), price, found["source"]))
            self.log.info("Throughput (%s, %s): %s s/epoch by workers, start-up %.1fs", shape,
                          found["source"], found["epoch_s"], found["startup_s"])
        curves = cal.past_curves(client, reg.experiment_name(contract.model_name), key,
                                 contract.learning_rate)
        estimate = estimate_epochs_needed(curves, float(self.plan["stop_accuracy"]),
                                          contract.max_epochs)
        verdict = assess_feasibility(
            deadline_s=contract.deadline_s, elapsed_s=0.0, max_workers=contract.max_workers,
            capacity=capacity, models=models, estimate=estimate, now_unix=time.time())
        self.log.info("Feasibility: %s", verdict.message)
        for hint in verdict.suggestions:
            self.log.info("  to meet it: %s", hint)
        if not verdict.feasible:
            if contract.on_infeasible == "fail":
                raise AirflowFailException(
                    f"contract infeasible ({verdict.binding}): {verdict.message}. Fix: "
                    + "; or ".join(verdict.suggestions)
                    + ". Or set on_infeasible to best_effort to train anyway")
            self.log.warning("on_infeasible=best_effort: training anyway on the fastest plan")
        model = next(m for m in models if m.shape == verdict.shape)
        usable = min(contract.max_workers, capacity[model.shape])
        if contract.resize_policy == "static" or not verdict.feasible:
            workers = usable
        else:
            workers = max(1, min(verdict.workers, usable))
        return {
            "verdict": verdict.to_dict(), "calibration_key": key, "num_workers": workers,
            "max_usable_workers": usable,
            "shape": model.shape, "prior_epochs": estimate.epochs,
            "epochs_source": estimate.source, "past_runs": len(curves),
            "throughput": {"shape": model.shape, "epoch_s": {str(n): t for n, t in
                                                             model.epoch_s.items()},
                           "startup_s": model.startup_s, "source": model.source},
            "predicted_training_s": verdict.predicted_training_s
            if math.isfinite(verdict.predicted_training_s) else None,
        }

    def _federated(self, contract: RunContract) -> dict[str, Any]:
        """Federated runs are bounded by rounds (and participations) and the deadline, and
        the job stops a round early that would cross it; no calibration is measured."""
        message = (f"federated: at most {contract.fl_rounds} rounds of "
                   f"{contract.fl_clients_per_round} of {contract.fl_clients} clients"
                   + (f", {contract.fl_network_budget} participations"
                      if contract.fl_network_budget else "")
                   + f", within {contract.deadline_s:g}s; not calibrated (rounds stop at the "
                   "deadline)")
        return self._not_calibrated(message, contract.fl_clients_per_round)

    def _not_calibrated(self, message: str, workers: int) -> dict[str, Any]:
        self.log.info("Feasibility: %s", message)
        return {"verdict": {"status": "not_assessed", "feasible": True, "message": message},
                "calibration_key": "", "num_workers": workers,
                "max_usable_workers": workers, "shape": "cpu",
                "prior_epochs": 0, "epochs_source": "none", "past_runs": 0,
                "throughput": {"shape": "cpu", "epoch_s": {}, "startup_s": 0.0,
                               "source": "none"},
                "predicted_training_s": None}

    def _worker_spec(self, contract: RunContract) -> dict[str, Any]:
        return {"profile": self.profile, "train_path": self.profile["paths"]["train"],
                "val_path": self.profile["paths"]["val"],
                "hidden_units": list(contract.hidden_units),
                "learning_rate": contract.learning_rate, "batch_size": contract.batch_size,
                "seed": contract.seed, "cpus_per_worker": contract.cpus_per_worker}


class TrainModelOperator(_RayJobStageOperator):
    """Ray Train job under the contract's deadline and accuracy target.

    One MLflow run per DAG run (found by its run-key tag on retry); the Ray job's submission id
    is deterministic, so a retry attaches to the running or finished job, and a resubmitted job
    resumes from its last checkpoint. The deadline clock starts at the first try.
    """

    template_fields: Sequence[str] = ("plan", "profile", "feasibility")
    operator_extra_links = (MlflowRunLink(), RayDashboardLink())

    def __init__(self, *, plan: Any, profile: Any, feasibility: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self.profile = profile
        self.feasibility = feasibility

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg
        from slaflow.settings import Endpoints

        contract = _contract(self.plan)
        client = self.mlflow.client
        exp_id = reg.get_or_create_experiment(client, reg.experiment_name(contract.model_name),
                                              self.mlflow.artifact_location)
        run_id, created = reg.find_or_create_run(
            client, exp_id, self.plan["run_key"],
            run_name=f"{context['dag'].dag_id}/{context['run_id']}",
            tags={reg.TAG_AIRFLOW_RUN_ID: context["run_id"],
                  reg.TAG_DAG_ID: context["dag"].dag_id,
                  reg.TAG_CONTRACT: json.dumps(contract.to_dict()),
                  reg.TAG_STARTED_AT: repr(time.time()),
                  "slaflow.calibration_key": self.feasibility["calibration_key"],
                  "slaflow.feasibility": json.dumps(self.feasibility["verdict"])},
        )
        if created:
            from mlflow.entities import Param

            params = {**contract.to_dict(), "num_workers": self.feasibility["num_workers"],
                      "stop_accuracy": self.plan["stop_accuracy"]}
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        started_at = float(client.get_run(run_id).data.tags[reg.TAG_STARTED_AT])
        self._persist_links(context, run_id, exp_id)
        spec = {
            "run_name": self.plan["run_key"], "storage_path": Endpoints.from_env().ray_storage,
            "tracking_uri": self.mlflow.tracking_uri, "mlflow_run_id": run_id,
            "profile": self.profile, "train_path": self.profile["paths"]["train"],
            "val_path": self.profile["paths"]["val"],
            "hidden_units": list(contract.hidden_units), "learning_rate": contract.learning_rate,
            "batch_size": contract.batch_size, "max_epochs": contract.max_epochs,
            "seed": contract.seed, "deadline_s": contract.deadline_s,
            "stop_accuracy": self.plan["stop_accuracy"], "started_at": started_at,
            "num_workers": self.feasibility["num_workers"],
            "cpus_per_worker": self.plan["cpus_per_worker"],
            "max_workers": contract.max_workers, "resize_policy": contract.resize_policy,
            "on_target_unreachable": contract.on_target_unreachable,
            "throughput": self.feasibility["throughput"],
            "prior_epochs": self.feasibility["prior_epochs"],
        }
        self.log.info("Training %s: %d %s workers to start (%s, resize policy %s); deadline "
                      "%.0fs, started %.1fs ago", contract.model_name, spec["num_workers"],
                      self.feasibility["shape"], self.feasibility["verdict"]["message"],
                      contract.resize_policy, contract.deadline_s, time.time() - started_at)
        if contract.training_mode == "spark_mllib":
            result = self._train_mllib(contract, spec, run_id)
        elif contract.training_mode == "federated":
            spec.update({k: v for k, v in contract.to_dict().items() if k.startswith("fl_")})
            self.log.info("Federated: %d clients (Dirichlet alpha %g), %d per round, up to %d "
                          "rounds, local epochs by the %s strategy", contract.fl_clients,
                          contract.fl_dirichlet_alpha, contract.fl_clients_per_round,
                          contract.fl_rounds, contract.fl_strategy)
            result = self.run_job(context, "federated", "ray_jobs.federated", spec,
                                  timeout_s=contract.deadline_s + 600)
        elif contract.tuning:
            # Optuna trials run side by side, one worker's CPUs each, as many as the budget
            # and the cluster hold.
            spec.update(tuning_trials=contract.tuning_trials,
                        num_workers=self.feasibility["max_usable_workers"])
            self.log.info("Tuning: up to %d Optuna trials, %d in parallel, inside the deadline",
                          contract.tuning_trials, spec["num_workers"])
            result = self.run_job(context, "tune", "ray_jobs.tune", spec,
                                  timeout_s=contract.deadline_s + 600)
        else:
            result = self.run_job(context, "train", "ray_jobs.train", spec,
                                  timeout_s=contract.deadline_s + 600)
        self.log.info("Trained %d epochs in %.1fs (deadline %s): %s (stop reason %s), best val "
                      "accuracy %.4f at epoch %d; %.0f worker-seconds, %d resizes",
                      result["epochs"], result["training_seconds"],
                      "met" if result["deadline_met"] else "MISSED", result["outcome"],
                      result["stop_reason"], result["best_val_accuracy"], result["best_epoch"],
                      result["worker_seconds"], result["resizes"])
        submission = (self._runner.last_submission_id
                      if contract.training_mode != "spark_mllib" else None)
        if submission:  # the link goes to this run's job, not the job list
            context["ti"].xcom_push(key="ray_dashboard_url", value=(
                f"{self.ray.endpoints['dashboard_url']}/#/jobs/{submission}"))
        return {**result, "mlflow_run_id": run_id, "experiment_id": exp_id,
                "ray_submission_id": submission}

    def _train_mllib(self, contract: RunContract, spec: dict[str, Any],
                     run_id: str) -> dict[str, Any]:
        """MLlib on Spark, in this task's process (client mode, like prepare), under the Spark
        deadline controller; exported as the same SavedModel as Keras models. A retry after
        the export returns the recorded result instead of logging a second model."""
        from policies import outcome, single_fit_stop_reason
        from ray_jobs.model_format import build_mlp
        from ray_jobs.train import _export_and_log
        from spark_jobs.deadline import SparkDeadlineInfeasible, run_with_deadline
        from spark_jobs.train_mllib import fit_logistic

        client = self.mlflow.client
        done = client.get_run(run_id).data.tags.get(MLLIB_RESULT_TAG)
        if done:
            self.log.info("MLlib model already trained and logged for this run; reusing it")
            return dict(json.loads(done))
        hook = SparkHook()
        master = contract.spark_master or hook.master
        spark = hook.session(f"slaflow-train-{self.plan['run_key']}", master=master,
                             conf=_controlled_spark_conf(contract, master))
        remaining = contract.deadline_s - (time.time() - float(spec["started_at"]))
        if remaining <= 0:
            raise AirflowFailException("contract field 'deadline_s': the deadline passed "
                                       "before training started; give a longer deadline")
        self.log.info("Training MLlib multinomial logistic regression on %s (up to %d "
                      "iterations, %d cores, %.0fs left)", master, contract.max_epochs,
                      contract.prepare_max_cores, remaining)
        try:
            fit, report = run_with_deadline(
                spark, lambda: fit_logistic(spark, train_path=spec["train_path"],
                                            val_path=spec["val_path"], profile=self.profile,
                                            max_iter=contract.max_epochs),
                deadline_s=remaining, max_cores=contract.prepare_max_cores,
                profile_path=_spark_profile_path(f"mllib-{contract.max_epochs}", contract,
                                                 master),
                on_infeasible=contract.on_infeasible, log=self.log.info)
        except SparkDeadlineInfeasible as exc:
            raise AirflowFailException(f"contract field 'deadline_s': {exc}") from exc
        training_seconds = time.time() - float(spec["started_at"])
        stop_accuracy = float(spec["stop_accuracy"])
        stop = single_fit_stop_reason(fit.val_accuracy, stop_accuracy, training_seconds,
                                      contract.deadline_s)
        label = outcome(stop, fit.val_accuracy, stop_accuracy)
        weights = build_mlp(len(self.profile["feature_names"]), len(self.profile["classes"]),
                            (), self.profile["feature_mean"], self.profile["feature_std"],
                            contract.seed).get_weights()
        weights[-2], weights[-1] = fit.kernel, fit.bias
        history = [{"epoch": fit.iterations, "val_accuracy": fit.val_accuracy,
                    "accuracy": fit.train_accuracy, "elapsed_s": training_seconds}]
        state = {"epoch": fit.iterations, "best_epoch": fit.iterations,
                 "best_val_accuracy": fit.val_accuracy, "stop_reason": stop.value,
                 "history": history}
        summary = {"worker_seconds": float(report["core_seconds"]), "resizes": 0,
                   "outcome": label.value}
        model_uri = _export_and_log({**spec, "hidden_units": []}, weights, state,
                                    training_seconds, summary, plots=False)
        result = {**summary, "epochs": fit.iterations, "best_epoch": fit.iterations,
                  "best_val_accuracy": fit.val_accuracy, "stop_reason": stop.value,
                  "history": history, "training_seconds": training_seconds,
                  "deadline_met": training_seconds <= contract.deadline_s,
                  "num_workers": contract.prepare_max_cores, "model_uri": model_uri,
                  "spark_deadline": {k: v for k, v in report.items() if k != "timeline"}}
        client.set_tag(run_id, MLLIB_RESULT_TAG, json.dumps(
            {k: v for k, v in result.items() if k != "spark_deadline"}))
        return result

    def _persist_links(self, context: Any, run_id: str, exp_id: str) -> None:
        from slaflow.settings import mlflow_ui_url

        ui = mlflow_ui_url(self.mlflow.tracking_uri)
        context["ti"].xcom_push(key="mlflow_run_url",
                                value=f"{ui}/#/experiments/{exp_id}/runs/{run_id}")
        context["ti"].xcom_push(key="ray_dashboard_url",
                                value=f"{self.ray.endpoints['dashboard_url']}/#/jobs")

class EvaluateModelOperator(_RayJobStageOperator):
    """Ray job: test-set metrics logged to the training run. Re-running logs the same values."""

    template_fields: Sequence[str] = ("plan", "profile", "train")

    def __init__(self, *, plan: Any, profile: Any, train: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan, self.profile, self.train = plan, profile, train

    def execute(self, context: Any) -> dict[str, Any]:
        spec = {"tracking_uri": self.mlflow.tracking_uri,
                "mlflow_run_id": self.train["mlflow_run_id"],
                "model_uri": self.train["model_uri"], "test_path": self.profile["paths"]["test"]}
        metrics = self.run_job(context, "eval", "ray_jobs.evaluate", spec, timeout_s=600)
        self.log.info("Test accuracy %.4f (95%% CI %.4f-%.4f) on %d rows; test loss %.4f",
                      metrics["test_accuracy"], metrics["test_accuracy_ci_low"],
                      metrics["test_accuracy_ci_high"], metrics["test_rows"],
                      metrics["test_loss"])
        return metrics


class RegisterModelOperator(_StageOperator):
    """MLflow model version with contract, metrics and lineage; one version per MLflow run."""

    template_fields: Sequence[str] = ("plan", "train", "evaluation")
    operator_extra_links = (ModelVersionLink(),)

    def __init__(self, *, plan: Any, train: Any, evaluation: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan, self.train, self.evaluation = plan, train, evaluation

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg
        from slaflow.settings import airflow_ui_url, mlflow_ui_url

        contract = _contract(self.plan)
        acc = self.evaluation["test_accuracy"]
        ci = (self.evaluation["test_accuracy_ci_low"], self.evaluation["test_accuracy_ci_high"])
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        run_url = f"{airflow_ui_url()}/dags/{dag_id}/runs/{quote(run_id, safe='')}"
        tags = {
            reg.TAG_AIRFLOW_RUN_ID: run_id, reg.TAG_DAG_ID: dag_id,
            reg.TAG_AIRFLOW_RUN_URL: run_url,
            reg.TAG_CONTRACT: json.dumps(contract.to_dict()), reg.TAG_TEST_ACCURACY: repr(acc),
            "slaflow.test_accuracy_ci95": json.dumps([round(ci[0], 4), round(ci[1], 4)]),
            "slaflow.stop_reason": str(self.train["stop_reason"]),
            "slaflow.outcome": str(self.train.get("outcome")),
            "slaflow.deadline_met": str(self.train["deadline_met"]).lower(),
            "slaflow.training_seconds": f"{self.train['training_seconds']:.1f}",
            "slaflow.training_mode": contract.training_mode,
        }
        if self.evaluation.get("model_params"):
            tags[reg.TAG_MODEL_PARAMS] = str(int(self.evaluation["model_params"]))
        description = (
            f"**{contract.model_name}**, trained by Airflow run [{dag_id} / {run_id}]"
            f"({run_url}).\n\n"
            f"- test accuracy **{acc:.4f}** (95% CI {ci[0]:.4f}-{ci[1]:.4f}) against a target "
            f"of {contract.target_accuracy:.4f}\n"
            f"- {self.train['epochs']} epoch(s) in {self.train['training_seconds']:.0f} s of a "
            f"{contract.deadline_s:.0f} s deadline ({self.train['stop_reason']})\n"
            f"- gate: pending (see the tags `slaflow.gate.*`)"
        )
        version, created = reg.register_version(
            self.mlflow.client, contract.model_name, self.train["model_uri"],
            self.train["mlflow_run_id"], tags, description)
        self.log.info("%s model version %s v%s", "Registered" if created else "Found existing",
                      contract.model_name, version.version)
        context["ti"].xcom_push(key="model_version_url", value=(
            f"{mlflow_ui_url(self.mlflow.tracking_uri)}/#/models/"
            f"{quote(contract.model_name, safe='')}/versions/{version.version}"))
        return {"model_name": contract.model_name, "model_version": str(version.version),
                "mlflow_run_id": self.train["mlflow_run_id"], "created": created,
                "description": description}


class GateOperator(_StageOperator):
    """The promotion gate's decision against the current champion, and whether a person must
    make it (the contract's ``review_policy``). Records the report on the model version.

    Read-and-tag only (no alias moves): a retry recomputes the same decision.
    """

    template_fields: Sequence[str] = ("plan", "evaluation", "registration")

    def __init__(self, *, plan: Any, evaluation: Any, registration: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan, self.evaluation, self.registration = plan, evaluation, registration

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg

        contract = _contract(self.plan)
        client = self.mlflow.client
        version = self.registration["model_version"]
        champion = reg.get_champion(client, contract.model_name)
        if champion is not None and champion.version == version:
            self.log.info("v%s is already champion (a previous try promoted it)", version)
            raw = client.get_model_version(contract.model_name, version).tags.get(
                reg.TAG_GATE_REPORT, "{}")
            return {"already_champion": True, "decision": json.loads(raw),
                    "review": {"required": False, "reasons": ["already champion"]},
                    "model_name": contract.model_name, "model_version": version}
        decision = decide_promotion(self.evaluation["test_accuracy"], contract.target_accuracy,
                                    contract.min_gain_over_champion, champion)
        ci = (self.evaluation["test_accuracy_ci_low"], self.evaluation["test_accuracy_ci_high"])
        review = review_request(
            decision, policy=contract.review_policy, accuracy_noise=(ci[1] - ci[0]) / 2,
            margin=contract.review_margin, candidate_cost=self.evaluation.get("model_params"),
            max_cost_ratio=contract.review_max_cost_ratio)
        report = {"test_accuracy_ci95": list(ci),
                  "candidate_cost": self.evaluation.get("model_params"),
                  "review": review.to_dict()}
        reg.record_gate(client, contract.model_name, version, decision, report,
                        pending_review=review.required)
        for reason in decision.reasons:
            self.log.info("Gate: %s", reason)
        self.log.info("Gate for %s v%s: %s; review %s (%s)", contract.model_name, version,
                      decision.summary(), "REQUIRED" if review.required else "not needed",
                      "; ".join(review.reasons))
        return {"already_champion": False, "decision": decision.to_dict(),
                "review": review.to_dict(), "report": report,
                "model_name": contract.model_name, "model_version": version,
                "report_markdown": gate_markdown(contract, version, decision, review, ci)}


def gate_markdown(contract: RunContract, version: str, decision: PromotionDecision,
                  review: ReviewRequest, ci: tuple[float, float]) -> str:
    """The gate report as a reviewer reads it (Airflow's Required Actions, MLflow)."""
    champ = ("none yet" if decision.champion_version is None else
             f"v{decision.champion_version} at {decision.champion_accuracy:.4f}")
    lines = [
        f"**{contract.model_name} v{version}**: test accuracy "
        f"**{decision.candidate_accuracy:.4f}** (95% CI {ci[0]:.4f}-{ci[1]:.4f}); "
        f"needs {decision.required_accuracy:.4f}; champion {champ}.",
        "",
        f"Automatic verdict: **{'promote' if decision.promote else 'keep as challenger'}**",
        "",
        *[f"- {r}" for r in decision.reasons],
        "",
        "Why this waits for you:" if review.required else "Review:",
        *[f"- {r}" for r in review.reasons],
        "",
        "Approve: it becomes `champion` and is deployed. Reject (or no answer within "
        f"{contract.review_timeout_s} s): it stays `challenger`, serving is unchanged.",
    ]
    return "\n".join(lines)


class PromoteModelOperator(_StageOperator):
    """Apply the gate (and the review's answer, when there was one): move the aliases.

    The champion is re-read here (not at plan time) and this task runs one at a time per DAG
    (``max_active_tis_per_dag=1``), so two runs cannot both promote against a stale champion.
    A retry finds the aliases already moved and moves nothing.
    """

    template_fields: Sequence[str] = ("plan", "evaluation", "registration", "gate", "review")

    def __init__(self, *, plan: Any, evaluation: Any, registration: Any, gate: Any,
                 review: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("max_active_tis_per_dag", 1)
        kwargs.setdefault("trigger_rule", "none_failed")  # the review is skipped when not needed
        super().__init__(**kwargs)
        self.plan, self.evaluation, self.registration = plan, evaluation, registration
        self.gate, self.review = gate, review

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg

        contract = _contract(self.plan)
        client = self.mlflow.client
        version = self.registration["model_version"]
        champion = reg.get_champion(client, contract.model_name)
        if self.gate.get("already_champion") or (
                champion is not None and champion.version == version):
            self.log.info("v%s is already champion (a previous try promoted it)", version)
            return {"promoted": True, "alias": CHAMPION, "model_version": version,
                    "decision": self.gate["decision"]}
        gate_decision = PromotionDecision.from_dict(self.gate["decision"])
        now_champion = None if champion is None else champion.version
        if now_champion != gate_decision.champion_version:
            self.log.warning("The champion moved from v%s to v%s since the gate: deciding again",
                             gate_decision.champion_version, now_champion)
        review = None if not self.review else ReviewOutcome(
            approved=bool(self.review["approved"]), responder=self.review["responder"],
            timeout_s=contract.review_timeout_s)
        try:
            decision = final_decision(
                gate_decision, candidate_accuracy=self.evaluation["test_accuracy"],
                target_accuracy=contract.target_accuracy,
                min_gain_over_champion=contract.min_gain_over_champion,
                champion_now=champion, review_required=bool(self.gate["review"]["required"]),
                review=review)
        except ValueError as exc:
            raise AirflowFailException(f"{exc}; clear the review task to ask again") from exc
        for reason in decision.reasons:
            self.log.info("Gate: %s", reason)
        moved = reg.apply_promotion(client, contract.model_name, version, decision,
                                    report={**self.gate.get("report", {}),
                                            "review_answer": self.review})
        client.set_tag(self.registration["mlflow_run_id"], reg.TAG_GATE_DECISION,
                       "promoted" if decision.promote else "not_promoted")
        client.update_model_version(
            contract.model_name, version,
            description=self.registration.get("description", "").replace(
                "- gate: pending (see the tags `slaflow.gate.*`)",
                f"- gate: **{'promoted to champion' if decision.promote else 'not promoted'}"
                f"**\n" + "\n".join(f"  - {r}" for r in decision.reasons)))
        self.log.info("Decision for %s v%s: %s; aliases set %s", contract.model_name, version,
                      decision.summary(), moved)
        return {"promoted": decision.promote, "alias": decision.alias, "model_version": version,
                "decision": decision.to_dict(), "aliases_moved": moved}


class ProfileServingOperator(_RayJobStageOperator):
    """Ray job: serving profile of the promoted version (full model and int8 variant, per
    replica shape and batch size, through the real Serve path), logged to the run as
    ``serving/profile.json`` and linked from the version's ``slaflow.serving.profile`` tag.

    Skips when this run promoted nothing. A retry measures again and overwrites.
    """

    template_fields: Sequence[str] = ("plan", "profile", "train", "promotion")

    def __init__(self, *, plan: Any, profile: Any, train: Any, promotion: Any,
                 **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "none_failed")
        super().__init__(**kwargs)
        self.plan, self.profile, self.train, self.promotion = plan, profile, train, promotion

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg
        from slaflow import settings

        contract = _contract(self.plan)
        if not self.promotion or not self.promotion.get("promoted"):
            raise AirflowSkipException("this run promoted nothing: no serving profile needed")
        version = str(self.promotion["model_version"])
        eps = self.ray.endpoints
        spec = {"tracking_uri": self.mlflow.tracking_uri,
                "mlflow_run_id": self.train["mlflow_run_id"],
                "model_uri": f"models:/{contract.model_name}/{version}",
                "model_name": contract.model_name, "version": version,
                "test_path": self.profile["paths"]["test"],
                "feature_mean": self.profile["feature_mean"],
                "feature_std": self.profile["feature_std"],
                "serve_host": eps["serve_host"], "serve_port": eps["serve_port"],
                "serve_url": eps["serve_url"], "cpus": settings.profile_cpus(),
                "batches": settings.profile_batches()}
        out = self.run_job(context, "profile", "ray_jobs.profile_serving", spec, timeout_s=900)
        self.mlflow.client.set_model_version_tag(contract.model_name, version,
                                                 reg.TAG_SERVING_PROFILE, out["profile_uri"])
        for p in out["profile"]["points"]:
            self.log.info("%s %.2g CPU batch %d: p50 %.2f ms p99 %.2f ms, %.0f req/s",
                          p["variant"], p["num_cpus"], p["max_batch_size"], p["p50_ms"],
                          p["p99_ms"], p["capacity_rps"])
        return out


def _price_table() -> Any:
    from policies import PriceTable
    from slaflow import settings

    path = settings.price_table_path()
    if not path:
        return PriceTable.default()
    try:
        return PriceTable.from_json(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise AirflowFailException(f"SLAFLOW_PRICE_TABLE={path}: {exc}") from exc


def version_spec(version: str, model_uri: str, variant_uri: str, plan: Any,
                 elastic_idle_s: float | None = None) -> dict[str, Any]:
    """Serve options of one version's tiers: ``warm`` as planned (SLO autoscaler, bounded
    queue, planned batching), ``batch`` (one replica, large batches) for large inputs and,
    with ``elastic_idle_s``, ``elastic``: the same shape scaled from zero by the SLO
    autoscaler, where the router sends frequent callers when the warm tier is full."""
    import dataclasses

    from ray_jobs.serve_policy import autoscaling_config

    actor = plan.ray_actor_options()
    tiers: dict[str, Any] = {}
    if elastic_idle_s is not None:
        cfg = dataclasses.replace(plan.autoscaler_config(), min_replicas=0,
                                  downscale_to_zero_delay_s=elastic_idle_s)
        tiers["elastic"] = {"ray_actor_options": actor,
                            "max_ongoing_requests": plan.max_ongoing_requests,
                            "max_queued_requests": plan.max_queued_requests,
                            "autoscaling_config": autoscaling_config(cfg, 0),
                            "user_config": {"max_batch_size": plan.max_batch_size,
                                            "batch_wait_timeout_s": plan.batch_wait_timeout_s}}
    return {"version": version, "model_uri": model_uri, "variant": plan.variant,
            "variant_uri": variant_uri if plan.variant != "full" else "",
            "tiers": {
                "warm": {"ray_actor_options": actor,
                         "max_ongoing_requests": plan.max_ongoing_requests,
                         "max_queued_requests": plan.max_queued_requests,
                         "autoscaling_config": autoscaling_config(plan.autoscaler_config(),
                                                                  plan.initial_replicas),
                         "user_config": {"max_batch_size": plan.max_batch_size,
                                         "batch_wait_timeout_s": plan.batch_wait_timeout_s}},
                # one replica for rare large inputs: a quarter CPU at most
                "batch": {"ray_actor_options": {**actor,
                                                "num_cpus": min(0.25, actor["num_cpus"])},
                          "num_replicas": 1,
                          "max_ongoing_requests": 8, "max_queued_requests": 64,
                          "user_config": {"max_batch_size": 1024,
                                          "batch_wait_timeout_s": 0.005}},
                **tiers}}


class DeployModelOperator(_StageOperator):
    """Serve the ``champion`` on Ray Serve as the contract plans it; a no-op when that version
    already serves alone.

    With a serving profile (``profile_serving``, or the version's ``slaflow.serving.profile``
    tag) the placement planner chooses variant, CPUs, batching, replica bounds and queue
    bound; the ``warm`` tier scales by the SLO autoscaler; a ``ModelRouter`` ingress sends large
    inputs to a ``batch`` tier. When another routed version serves, the new one is deployed
    beside it and takes a canary share of the traffic (10%, 50%, then all), checked at each
    step against the old one (errors, tail latency, disagreeing answers) on probe requests from
    the test set plus live traffic; a failed check rolls the traffic and the registry back
    (``champion`` returns to the old version) and fails the task, the old version serving
    throughout. ``canary=False`` (``ml_rollback``) switches at once. Without a profile the
    version is served as one fixed deployment (``serving_replicas`` x 0.5 CPU).

    Skips (with the reason) when the model has no champion yet. Idempotent: a retry finds the
    version serving, or resumes the canary from what serves now.
    """

    template_fields: Sequence[str] = ("plan", "promotion", "serving_profile", "data_profile")
    operator_extra_links = (ServeEndpointLink(),)

    def __init__(self, *, plan: Any, promotion: Any, serving_profile: Any = None,
                 data_profile: Any = None, canary: bool = True, ready_timeout_s: float = 300,
                 canary_probe_requests: int = 60, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "none_failed")
        super().__init__(**kwargs)
        self.plan, self.promotion = plan, promotion
        self.serving_profile, self.data_profile = serving_profile, data_profile
        self.canary = canary
        self.ready_timeout_s = ready_timeout_s
        self.canary_probe_requests = canary_probe_requests

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config.registry import get_alias_version

        contract = _contract(self.plan)
        champion = get_alias_version(self.mlflow.client, contract.model_name, CHAMPION)
        if champion is None:
            raise AirflowSkipException(
                f"{contract.model_name} has no champion (this run was not promoted and none was "
                f"before): nothing to serve")
        version = str(champion.version)
        endpoint = f"{self.ray.endpoints['serve_url']}/{contract.model_name}"
        context["ti"].xcom_push(key="endpoint_url", value=endpoint)
        info = _endpoint_info(endpoint)
        served = str(info["model_version"]) if info else None
        candidate = (info or {}).get("canary", {}).get("candidate")
        if served == version and candidate is None:
            self.log.info("%s already serves %s v%s: nothing to do", endpoint,
                          contract.model_name, version)
            return {"endpoint_url": endpoint, "model_version": version, "changed": False}
        self.ray.connect()
        from ray import serve

        serve.start(http_options={"host": self.ray.endpoints["serve_host"],
                                  "port": int(self.ray.endpoints["serve_port"])})
        profile_doc = self._profile(contract.model_name, version)
        if profile_doc is None:
            return self._deploy_fixed(context, contract, version, endpoint, served)
        import ray

        from policies import PlacementInfeasible, ServingProfile, plan_for_contract

        prices = _price_table()
        try:
            plan = plan_for_contract(contract, ServingProfile.from_dict(profile_doc), prices,
                                     ray.cluster_resources())  # type: ignore[no-untyped-call]
        except PlacementInfeasible as exc:
            still = f"v{served} still serves" if served else "nothing was serving"
            raise AirflowFailException(
                f"serving placement for {contract.model_name} v{version}: {exc} (binding: "
                f"{exc.binding}, off by {exc.gap:.4g}); {still}") from exc
        for r in plan.reasons:
            self.log.info("placement: %s", r)
        zero = prices.tiers.get("scale_to_zero")
        elastic = zero is not None and not plan.scale_to_zero and \
            "scale_to_zero" in contract.serving_tiers.split(",")
        new = version_spec(version, f"models:/{contract.model_name}/{version}",
                           profile_doc.get("variant_uri", ""), plan,
                           elastic_idle_s=zero.idle_timeout_s if elastic and zero else None)
        router = self._router_config(contract, plan, profile_doc)
        old = self._old_spec(contract.model_name, served) if (
            served and served != version and info and "routes" in info) else None
        canary_log: list[dict[str, Any]] = []
        if old is not None and self.canary:
            canary_log = self._canary(context, contract, endpoint, old, new, router)
        if old is not None:
            self._switch(contract, endpoint, keep=new, drop=old, router=router)
        else:
            self._deploy(contract, [new], {**router, "primary": version})
            self._wait(endpoint, version, None)
        self.log.info("Serving %s v%s at %s (%s)", contract.model_name, version, endpoint,
                      plan.reasons[0])
        self._record_serving(context, contract, version, endpoint, plan=plan.to_dict(),
                             spec=new, canary=canary_log, router=router)
        return {"endpoint_url": endpoint, "model_version": version, "changed": True,
                "placement": plan.to_dict(), "canary": canary_log}

    # -- helpers ---------------------------------------------------------------------------

    def _profile(self, model: str, version: str) -> dict[str, Any] | None:
        if self.serving_profile and str(self.serving_profile.get("version")) == version:
            doc = dict(self.serving_profile["profile"])
            doc["variant_uri"] = self.serving_profile.get("variant_uri", "")
            return doc
        from mlflow_config import registry as reg

        uri = self.mlflow.client.get_model_version(model, version).tags.get(
            reg.TAG_SERVING_PROFILE)
        if not uri:
            self.log.warning("%s v%s has no serving profile: fixed deployment", model, version)
            return None
        import mlflow

        doc = mlflow.artifacts.load_dict(uri)
        return dict(doc)

    def _router_config(self, contract: RunContract, plan: Any,
                       profile_doc: dict[str, Any]) -> dict[str, Any]:
        from policies import ProfilePoint, RouterThresholds

        point = next(ProfilePoint(**p) for p in profile_doc["points"]
                     if p["variant"] == plan.variant and p["num_cpus"] == plan.num_cpus
                     and p["max_batch_size"] == plan.max_batch_size)
        thresholds = RouterThresholds.from_profile(point, contract.latency_slo_ms,
                                                   contract.latency_percentile,
                                                   plan.idle_timeout_s)
        return {"candidate": None, "share": 0.0, "percentile": contract.latency_percentile,
                "thresholds": thresholds.to_dict(),
                "warm_max_in_flight": plan.max_ongoing_requests * plan.max_replicas}

    def _old_spec(self, model: str, served: str) -> dict[str, Any] | None:
        from mlflow_config import registry as reg

        raw = self.mlflow.client.get_model_version(model, served).tags.get(reg.TAG_SERVING)
        spec = json.loads(raw).get("spec") if raw else None
        return dict(spec) if spec else None

    def _deploy(self, contract: RunContract, versions: list[dict[str, Any]],
                router: dict[str, Any]) -> None:
        from ray import serve

        from ray_jobs.serve_router import build_routed_app

        app = build_routed_app(contract.model_name, self.mlflow.tracking_uri, versions, router,
                               node_resource=contract.serving_node_resource)
        serve.run(app, name=contract.model_name, route_prefix=f"/{contract.model_name}",
                  blocking=False)

    def _switch(self, contract: RunContract, endpoint: str, keep: dict[str, Any],
                drop: dict[str, Any], router: dict[str, Any]) -> None:
        """All traffic to ``keep``, then ``drop``'s deployments removed: two deploys, so a
        router replica still draining from the step before (it may hold requests for
        ``drop``) finishes them before ``drop`` goes away."""
        v_keep = str(keep["version"])
        self._deploy(contract, [keep, drop],
                     {**router, "primary": v_keep, "candidate": None, "share": 0.0})
        self._wait(endpoint, v_keep, None)
        self._wait_running(contract.model_name)
        self._deploy(contract, [keep], {**router, "primary": v_keep})
        self._wait(endpoint, v_keep, None)
        self._wait_running(contract.model_name)

    def _wait_running(self, app: str) -> None:
        from ray_jobs.serve_app import wait_running

        wait_running(app, self.ready_timeout_s, poll_s=1.0)

    def _wait(self, endpoint: str, primary: str, candidate: str | None) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            info = _endpoint_info(endpoint) or {}
            if str(info.get("model_version")) == primary and \
                    info.get("canary", {}).get("candidate") == candidate:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{endpoint} did not serve v{primary} (canary {candidate}) "
                                   f"within {self.ready_timeout_s:.0f}s; see the Ray "
                                   f"dashboard's Serve tab")
            time.sleep(1)

    def _canary(self, context: Any, contract: RunContract, endpoint: str,
                old: dict[str, Any], new: dict[str, Any],
                router: dict[str, Any]) -> list[dict[str, Any]]:
        from policies import (
            CanaryStats,
            canary_verdict,
            disagreement_bound,
            next_canary_share,
        )

        v_old, v_new = str(old["version"]), str(new["version"])
        # Two classifiers of test accuracy a and b disagree on at most (1-a)+(1-b) of the
        # rows; far more than that means the new one answers wrongly as served.
        max_disagreement = disagreement_bound(self._test_accuracy(contract.model_name, v_old),
                                              self._test_accuracy(contract.model_name, v_new))
        log: list[dict[str, Any]] = []
        share = 0.0
        while (share := next_canary_share(share)) < 1.0:
            self._deploy(contract, [old, new],
                         {**router, "primary": v_old, "candidate": v_new, "share": share})
            self._wait(endpoint, v_old, v_new)
            self._wait_running(contract.model_name)  # no probe on replicas still starting
            verdict = None
            for _ in range(10):
                self._probe(endpoint)
                stats = requests_json(f"{endpoint}/-/stats")["versions"]
                s_new, s_old = stats.get(v_new, {}), stats.get(v_old, {})
                verdict = canary_verdict(
                    CanaryStats(int(s_new.get("requests", 0)), int(s_new.get("errors", 0)),
                                float(s_new.get("tail_ms", 0.0)),
                                int(s_new.get("disagreements", 0))),
                    CanaryStats(int(s_old.get("requests", 0)), int(s_old.get("errors", 0)),
                                float(s_old.get("tail_ms", 0.0))),
                    slo_ms=contract.latency_slo_ms, min_requests=20,
                    max_disagreement=max_disagreement)
                if verdict.action != "wait":
                    break
            assert verdict is not None
            log.append({"share": share, "action": verdict.action, "reason": verdict.reason})
            self.log.info("canary v%s at %.0f%%: %s (%s)", v_new, share * 100, verdict.action,
                          verdict.reason)
            if verdict.action != "advance":
                self._switch(contract, endpoint, keep=old, drop=new, router=router)
                from mlflow_config import registry as reg

                marker = f"{context['dag'].dag_id}/{context['run_id']}"
                try:
                    reg.rollback(self.mlflow.client, contract.model_name, marker)
                except reg.RollbackError as exc:
                    self.log.warning("registry rollback: %s", exc)
                raise AirflowFailException(
                    f"canary of {contract.model_name} v{v_new} rolled back at "
                    f"{share:.0%} of traffic: {verdict.reason}; v{v_old} serves all traffic "
                    f"again and is champion")
        return log

    def _test_accuracy(self, model: str, version: str) -> float:
        mv = self.mlflow.client.get_model_version(model, version)
        run = self.mlflow.client.get_run(mv.run_id) if mv.run_id else None
        return float(run.data.metrics.get("test_accuracy", 0.0)) if run else 0.0

    def _probe(self, endpoint: str) -> None:
        """Test-set rows as canary traffic (both versions see them; real traffic adds up)."""
        from concurrent.futures import ThreadPoolExecutor

        import requests

        if not self.data_profile:
            time.sleep(5)  # live traffic only
            return
        if getattr(self, "_probe_rows", None) is None:  # read the test set once per task
            from ray_jobs import data_io

            self._probe_rows, _ = data_io.read_xy(self.data_profile["paths"]["test"],
                                                  self.data_profile["feature_names"])
        x = self._probe_rows
        n = self.canary_probe_requests

        def one(i: int) -> None:
            try:
                requests.post(endpoint, json={"instances": [x[i % len(x)].tolist()]},
                              headers={"x-slaflow-caller": "slaflow-canary"}, timeout=30)
            except requests.RequestException:
                pass

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(n)))

    def _deploy_fixed(self, context: Any, contract: RunContract, version: str, endpoint: str,
                      served: str | None) -> dict[str, Any]:
        from ray import serve

        from ray_jobs.serve_app import build_app

        self.log.info("Deploying %s v%s (now serving: %s) to %s as a fixed deployment",
                      contract.model_name, version, served or "nothing", endpoint)
        app = build_app(f"models:/{contract.model_name}/{version}", self.mlflow.tracking_uri,
                        contract.model_name, version, contract.serving_replicas,
                        contract.serving_node_resource)
        serve.run(app, name=contract.model_name, route_prefix=f"/{contract.model_name}",
                  blocking=False)
        deadline = time.monotonic() + self.ready_timeout_s
        while _served_version(endpoint) != version:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{endpoint} did not serve v{version} within "
                                   f"{self.ready_timeout_s:.0f}s; see the Ray dashboard's "
                                   f"Serve tab")
            time.sleep(1)
        self._record_serving(context, contract, version, endpoint)
        return {"endpoint_url": endpoint, "model_version": version, "changed": True}

    def _record_serving(self, context: Any, contract: RunContract, version: str,
                        endpoint: str, plan: dict[str, Any] | None = None,
                        spec: dict[str, Any] | None = None,
                        canary: list[dict[str, Any]] | None = None,
                        router: dict[str, Any] | None = None) -> None:
        """The serving placement, on the model version (registry review reads it there)."""
        from mlflow_config import registry as reg

        record: dict[str, Any] = {
            "endpoint": endpoint, "latency_slo_ms": contract.latency_slo_ms,
            "latency_percentile": contract.latency_percentile,
            "deployed_by": f"{context['dag'].dag_id}/{context['run_id']}",
            "deployed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if plan is None:
            record.update(replicas=contract.serving_replicas, num_cpus_per_replica=0.5,
                          node_resource=contract.serving_node_resource or None)
        else:
            keys = ("variant", "tier", "num_cpus", "num_gpus", "min_replicas", "max_replicas",
                    "max_batch_size", "batch_wait_timeout_s", "max_queued_requests",
                    "predicted_tail_ms", "accuracy", "cost_per_hour")
            record.update(plan={k: plan[k] for k in keys}, spec=spec, canary=canary,
                          thresholds=(router or {}).get("thresholds"))
        self.mlflow.client.set_model_version_tag(contract.model_name, version, reg.TAG_SERVING,
                                                 json.dumps(record))


def requests_json(url: str) -> dict[str, Any]:
    import requests

    resp = requests.get(url, timeout=10)
    resp.raise_for_status()
    out: dict[str, Any] = resp.json()
    return out


def _endpoint_info(endpoint: str) -> dict[str, Any] | None:
    import requests

    try:
        resp = requests.get(endpoint, timeout=5)
        body = resp.json() if resp.ok else None
        return body if isinstance(body, dict) and "model_version" in body else None
    except (requests.RequestException, ValueError):
        return None


def _served_version(endpoint: str) -> str | None:
    import requests

    try:
        resp = requests.get(endpoint, timeout=5)
        return str(resp.json()["model_version"]) if resp.ok else None
    except (requests.RequestException, ValueError, KeyError):
        return None


class VerifyEndpointOperator(_StageOperator):
    """Real HTTP requests from the test set: answers checked, latency p50/p99 recorded.

    Also sends one malformed request and requires a 4xx. Read-only apart from metrics.
    """

    template_fields: Sequence[str] = ("plan", "profile", "train", "evaluation", "registration",
                                      "promotion", "deployment")

    def __init__(self, *, plan: Any, profile: Any, train: Any, evaluation: Any,
                 registration: Any, promotion: Any, deployment: Any, requests_count: int = 200,
                 **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "none_failed")
        super().__init__(**kwargs)
        self.plan, self.profile, self.train = plan, profile, train
        self.evaluation, self.registration = evaluation, registration
        self.promotion, self.deployment = promotion, deployment
        self.requests_count = requests_count

    def execute(self, context: Any) -> dict[str, Any]:
        contract = _contract(self.plan)
        summary: dict[str, Any] = {
            "contract": contract.to_dict(),
            "accuracy": self.evaluation["test_accuracy"],
            "deadline_met": self.train["deadline_met"],
            "training_seconds": round(self.train["training_seconds"], 2),
            "stop_reason": self.train["stop_reason"],
            "outcome": self.train.get("outcome"),
            "worker_seconds": round(self.train.get("worker_seconds", 0.0), 1),
            "resizes": self.train.get("resizes", 0),
            "mlflow_run_id": self.train["mlflow_run_id"],
            "model_name": contract.model_name,
            "model_version": self.registration["model_version"],
            "alias": self.promotion["alias"],
            "promoted": self.promotion["promoted"],
            "endpoint_url": None, "served_version": None,
            "verify_p50_ms": None, "verify_p99_ms": None, "verify_accuracy": None,
        }
        if not self.deployment:
            self.log.warning("Nothing deployed (no champion): endpoint not verified")
            return summary
        result = self._probe(self.deployment["endpoint_url"], contract)
        latencies = result.pop("latencies_ms")
        summary.update(result, endpoint_url=self.deployment["endpoint_url"],
                       served_version=self.deployment["model_version"])
        placed = self.deployment.get("placement")
        if placed:
            summary["placement"] = (
                f"{placed['variant']} on {placed['tier']}, {placed['num_cpus']:g} CPU x "
                f"{placed['min_replicas']}-{placed['max_replicas']} replicas (SLO autoscaler), "
                f"batch {placed['max_batch_size']}, queue {placed['max_queued_requests']}, "
                f"predicted p{placed['percentile']} {placed['predicted_tail_ms']:.1f} ms, "
                f"{placed['cost_per_hour']:.4f}/h")
        client = self.mlflow.client
        for key in ("verify_p50_ms", "verify_p99_ms", "verify_accuracy"):
            client.log_metric(self.train["mlflow_run_id"], key, float(result[key]))
        client.log_figure(self.train["mlflow_run_id"], latency_plot(latencies, contract),
                          "serving/verify_latency.png")
        return summary

    def _probe(self, endpoint: str, contract: RunContract) -> dict[str, Any]:
        import numpy as np
        import requests

        from ray_jobs import data_io

        x, y = data_io.read_xy(self.profile["paths"]["test"], self.profile["feature_names"])
        classes = self.profile["classes"]
        n = min(self.requests_count, len(x))
        latencies, correct = [], 0
        with requests.Session() as http:
            bad = http.post(endpoint, json={"instances": [[1.0, 2.0]]}, timeout=10)
            if not 400 <= bad.status_code < 500:
                raise RuntimeError(f"a malformed request got HTTP {bad.status_code}, not 4xx")
            for i in range(n):
                t0 = time.perf_counter()
                resp = http.post(endpoint, json={"instances": [x[i].tolist()]}, timeout=10)
                latencies.append((time.perf_counter() - t0) * 1000)
                if resp.status_code != 200:
                    raise RuntimeError(f"request {i} got HTTP {resp.status_code}: {resp.text}")
                correct += resp.json()["predictions"][0] == classes[int(y[i])]
        p50 = statistics.median(latencies)
        p99 = float(np.percentile(latencies, 99))
        slo_p = float(np.percentile(latencies, contract.latency_percentile))
        slo_met = slo_p <= contract.latency_slo_ms
        self.log.info("%d requests: p50 %.2f ms, p99 %.2f ms, p%d %.2f ms vs SLO %.0f ms (%s); "
                      "served accuracy %.4f; malformed request -> HTTP %d", n, p50, p99,
                      contract.latency_percentile, slo_p, contract.latency_slo_ms,
                      "met" if slo_met else "MISSED", correct / n, bad.status_code)
        return {"latencies_ms": latencies,
                "verify_p50_ms": round(p50, 3), "verify_p99_ms": round(p99, 3),
                "verify_accuracy": correct / n, "verify_requests": n, "latency_slo_met": slo_met,
                "bad_request_status": bad.status_code}


def latency_plot(latencies_ms: list[float], contract: RunContract) -> Any:
    """Histogram of the verify requests' latency against the contract's SLO (a PNG in MLflow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(latencies_ms, bins=40, color="#4c72b0")
    p = float(np.percentile(latencies_ms, contract.latency_percentile))
    ax.axvline(contract.latency_slo_ms, color="red", linestyle="--",
               label=f"SLO {contract.latency_slo_ms:g} ms")
    ax.axvline(p, color="black", linestyle=":",
               label=f"p{contract.latency_percentile} {p:.1f} ms")
    ax.set_xlabel("request latency (ms), real HTTP to Ray Serve")
    ax.set_ylabel("requests")
    ax.set_title(f"Endpoint check: {len(latencies_ms)} requests")
    ax.legend()
    fig.tight_layout()
    return fig


class RollbackModelOperator(_StageOperator):
    """Move ``champion`` back to ``previous_champion`` (``ml_rollback``); deploy follows.

    Idempotent: the demoted version is tagged with this Airflow run, so a retry finds the
    rollback done and returns the same answer. No ``previous_champion``: fails, saying so.
    """

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg

        model = str(context["params"]["model_name"])
        client = self.mlflow.client
        marker = f"{context['dag'].dag_id}/{context['run_id']}"
        try:
            moved = reg.rollback(client, model, marker)
        except reg.RollbackError as exc:
            raise AirflowFailException(str(exc)) from exc
        restored = client.get_model_version(model, moved["champion"])
        contract = json.loads(restored.tags.get(reg.TAG_CONTRACT) or "{}")
        contract["model_name"] = model
        self.log.info("%s: champion is v%s again%s", model, moved["champion"],
                      f"; v{moved['demoted']} demoted" if moved["demoted"] else "")
        return {"contract": RunContract.from_dict(contract).to_dict(), **moved}
