"""Training and evaluation stages.

``TrainModelOperator`` runs the contract's training mode, each a small strategy object:
centralized Ray Train under the deadline controller, an Optuna study, federated rounds on Ray
actors, or MLlib on Spark. Every mode ends the same way: the best weights exported as the
slaflow model format to the run's MLflow run. ``EvaluateModelOperator`` scores it on the test
split (and builds and scores its cheaper servable variant).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from operators.base import RayJobStageOperator, run_marker
from operators.hooks import SparkHook
from operators.links import MlflowRunLink, RayDashboardLink
from policies import RunContract

#: A train job may run this long past the deadline before it is stopped (export, logging).
JOB_GRACE_S = 600.0


class _Strategy:
    """One training mode: what it logs before it starts and how it runs."""

    stage = "train"
    module = "ray_jobs.train"

    def describe(self, contract: RunContract, spec: dict[str, Any]) -> str:
        return f"{spec['num_workers']} worker(s) to start, resize policy {contract.resize_policy}"

    def run(self, op: TrainModelOperator, context: Any, spec: dict[str, Any]) -> dict[str, Any]:
        return op.run_job(
            context, self.stage, self.module, spec, timeout_s=op.contract.deadline_s + JOB_GRACE_S
        )


class _Centralized(_Strategy):
    """Ray Train data-parallel under the deadline controller (``ray_jobs.train``)."""


class _Tuning(_Strategy):
    """An Optuna study whose trials run side by side, one worker's CPUs each, as many as the
    budget and the cluster hold (``ray_jobs.tune``)."""

    stage = "tune"
    module = "ray_jobs.tune"

    def describe(self, contract: RunContract, spec: dict[str, Any]) -> str:
        return (
            f"up to {contract.tuning_trials} Optuna trials, {spec['num_workers']} in "
            f"parallel, inside the deadline"
        )

    def run(self, op: TrainModelOperator, context: Any, spec: dict[str, Any]) -> dict[str, Any]:
        spec = {**spec, "num_workers": op.feasibility["max_usable_workers"]}
        return super().run(op, context, spec)


class _Federated(_Strategy):
    """FedAvg over Ray actor clients, local epochs by hyperFL (``ray_jobs.federated``)."""

    stage = "federated"
    module = "ray_jobs.federated"

    def describe(self, contract: RunContract, spec: dict[str, Any]) -> str:
        return (
            f"federated: {contract.fl_clients} clients (Dirichlet alpha "
            f"{contract.fl_dirichlet_alpha:g}), {contract.fl_clients_per_round} per round, "
            f"up to {contract.fl_rounds} rounds, local epochs by the {contract.fl_strategy} "
            f"strategy"
        )


class _SparkMllib(_Strategy):
    """MLlib's multinomial logistic regression on the Spark master, in this task's process
    (client mode, like prepare), under the Spark deadline controller; exported as the same
    SavedModel as Keras models. A retry after the export returns the recorded result instead
    of logging a second model."""

    stage = "mllib"

    def describe(self, contract: RunContract, spec: dict[str, Any]) -> str:
        return (
            f"MLlib logistic regression, up to {contract.max_epochs} iterations on "
            f"{contract.prepare_max_cores} Spark cores"
        )

    def run(self, op: TrainModelOperator, context: Any, spec: dict[str, Any]) -> dict[str, Any]:
        from mlflow_config import registry as reg
        from policies import deadline_met, outcome, single_fit_stop_reason
        from ray_jobs.export import export_and_log
        from ray_jobs.model_format import build_mlp

        if spec["profile"].get("categorical_columns"):
            raise AirflowFailException(
                f"contract field 'training_mode': spark_mllib reads numeric columns only and "
                f"the data has text columns {spec['profile']['categorical_columns'][:5]}. Fix: "
                f"use training_mode 'centralized', or leave them out with drop_columns"
            )
        from spark_jobs.deadline import (
            SparkDeadlineInfeasible,
            contract_profile_path,
            controlled_conf,
            run_with_deadline,
        )
        from spark_jobs.train_mllib import fit_logistic

        contract, profile = op.contract, op.profile
        client = op.mlflow.client
        run_id = spec["mlflow_run_id"]
        done = reg.run_tag(client, run_id, reg.TAG_MLLIB_RESULT)
        if done:
            op.log.info("MLlib model already trained and logged for this run; reusing it")
            return dict(json.loads(done))
        hook = SparkHook()
        master = contract.spark_master or hook.master
        spark = hook.session(
            f"slaflow-train-{op.run_plan.run_key}",
            master=master,
            conf=controlled_conf(master, contract.prepare_max_cores),
        )
        remaining = contract.deadline_s - (time.time() - float(spec["started_at"]))
        if remaining <= 0:
            raise AirflowFailException(
                "contract field 'deadline_s': the deadline passed "
                "before training started; give a longer deadline"
            )
        try:
            fit, report = run_with_deadline(
                spark,
                lambda: fit_logistic(
                    spark,
                    train_path=spec["train_path"],
                    val_path=spec["val_path"],
                    profile=profile,
                    max_iter=contract.max_epochs,
                ),
                deadline_s=remaining,
                max_cores=contract.prepare_max_cores,
                profile_path=contract_profile_path(
                    f"mllib-{contract.max_epochs}", contract, master
                ),
                on_infeasible=contract.on_infeasible,
                log=op.log.info,
            )
        except SparkDeadlineInfeasible as exc:
            raise AirflowFailException(f"contract field 'deadline_s': {exc}") from exc
        training_seconds = time.time() - float(spec["started_at"])
        stop_accuracy = float(spec["stop_accuracy"])
        stop = single_fit_stop_reason(
            fit.val_accuracy, stop_accuracy, training_seconds, contract.deadline_s
        )
        label = outcome(stop, fit.val_accuracy, stop_accuracy)
        weights = build_mlp(
            len(profile["feature_names"]),
            len(profile["classes"]),
            (),
            profile["feature_mean"],
            profile["feature_std"],
            contract.seed,
        ).get_weights()
        weights[-2], weights[-1] = fit.kernel, fit.bias
        history = [
            {
                "epoch": fit.iterations,
                "val_accuracy": fit.val_accuracy,
                "accuracy": fit.train_accuracy,
                "elapsed_s": training_seconds,
            }
        ]
        state = {
            "epoch": fit.iterations,
            "best_epoch": fit.iterations,
            "best_val_accuracy": fit.val_accuracy,
            "stop_reason": stop.value,
            "history": history,
        }
        summary = {
            "worker_seconds": float(report["core_seconds"]),
            "resizes": 0,
            "outcome": label.value,
        }
        model_uri = export_and_log(
            {**spec, "hidden_units": []}, weights, state, training_seconds, summary, plots=False
        )
        result = {
            **summary,
            "epochs": fit.iterations,
            "best_epoch": fit.iterations,
            "best_val_accuracy": fit.val_accuracy,
            "stop_reason": stop.value,
            "history": history,
            "training_seconds": training_seconds,
            "deadline_met": deadline_met(training_seconds, contract.deadline_s),
            "num_workers": contract.prepare_max_cores,
            "model_uri": model_uri,
            "spark_deadline": {k: v for k, v in report.items() if k != "timeline"},
        }
        reg.set_run_tag(
            client,
            run_id,
            reg.TAG_MLLIB_RESULT,
            json.dumps({k: v for k, v in result.items() if k != "spark_deadline"}),
        )
        return result


_STRATEGIES: dict[str, _Strategy] = {
    "centralized": _Centralized(),
    "tuning": _Tuning(),
    "federated": _Federated(),
    "spark_mllib": _SparkMllib(),
}


def _strategy(contract: RunContract) -> _Strategy:
    return _STRATEGIES["tuning" if contract.tuning else contract.training_mode]


class TrainModelOperator(RayJobStageOperator):
    """Train under the contract's deadline and accuracy target, in its training mode.

    One MLflow run per DAG run (found by its run-key tag on retry); Ray Job submission ids are
    deterministic, so a retry attaches to the running or finished job, and a resubmitted job
    resumes from its last checkpoint. The deadline clock starts at the first try.
    """

    template_fields: Sequence[str] = ("plan", "profile", "feasibility")
    operator_extra_links = (MlflowRunLink(), RayDashboardLink())

    def __init__(self, *, profile: Any, feasibility: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.profile = profile
        self.feasibility = feasibility

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg
        from ray_jobs.specs import training_spec
        from slaflow.settings import Endpoints, mlflow_ui_url

        contract, plan = self.contract, self.run_plan
        client = self.mlflow.client
        exp_id = reg.get_or_create_experiment(
            client, reg.experiment_name(contract.model_name), self.mlflow.artifact_location
        )
        run_id, started_at = reg.start_training_run(
            client,
            exp_id,
            plan.run_key,
            run_name=run_marker(context),
            tags={
                reg.TAG_AIRFLOW_RUN_ID: context["run_id"],
                reg.TAG_DAG_ID: context["dag"].dag_id,
                reg.TAG_CONTRACT: json.dumps(contract.to_dict()),
                reg.TAG_CALIBRATION_KEY: self.feasibility["calibration_key"],
                reg.TAG_FEASIBILITY: json.dumps(self.feasibility["verdict"]),
            },
            params={
                **contract.to_dict(),
                "num_workers": self.feasibility["num_workers"],
                "stop_accuracy": plan.stop_accuracy,
            },
        )
        dashboard = self.ray.endpoints["dashboard_url"]
        context["ti"].xcom_push(
            key="mlflow_run_url",
            value=(
                f"{mlflow_ui_url(self.mlflow.tracking_uri)}/#/experiments/{exp_id}/runs/{run_id}"
            ),
        )
        context["ti"].xcom_push(key="ray_dashboard_url", value=f"{dashboard}/#/jobs")
        spec = training_spec(
            contract,
            self.profile,
            run_name=plan.run_key,
            storage_path=Endpoints.from_env().ray_storage,
            tracking_uri=self.mlflow.tracking_uri,
            mlflow_run_id=run_id,
            started_at=started_at,
            stop_accuracy=plan.stop_accuracy,
            num_workers=self.feasibility["num_workers"],
            throughput=self.feasibility["throughput"],
            prior_epochs=self.feasibility["prior_epochs"],
        )
        strategy = _strategy(contract)
        self.log.info(
            "Training %s (%s): %s; %s; deadline %.0fs, started %.1fs ago",
            contract.model_name,
            type(strategy).__name__.strip("_").lower(),
            strategy.describe(contract, spec),
            self.feasibility["verdict"]["message"],
            contract.deadline_s,
            time.time() - started_at,
        )
        result = strategy.run(self, context, spec)
        reg.record_training(
            client,
            run_id,
            training_mode=contract.training_mode,
            stop_reason=result["stop_reason"],
            outcome=result.get("outcome"),
        )
        self.log.info(
            "Trained %d epochs in %.1fs (deadline %s): %s (stop reason %s), best val "
            "accuracy %.4f at epoch %d; %.0f worker-seconds, %d resizes",
            result["epochs"],
            result["training_seconds"],
            "met" if result["deadline_met"] else "MISSED",
            result["outcome"],
            result["stop_reason"],
            result["best_val_accuracy"],
            result["best_epoch"],
            result["worker_seconds"],
            result["resizes"],
        )
        submission = self.last_submission_id
        if submission:  # the link goes to this run's job, not the job list
            context["ti"].xcom_push(
                key="ray_dashboard_url", value=f"{dashboard}/#/jobs/{submission}"
            )
        return {
            **result,
            "mlflow_run_id": run_id,
            "experiment_id": exp_id,
            "ray_submission_id": submission,
        }


class EvaluateModelOperator(RayJobStageOperator):
    """Ray job: test-set metrics logged to the training run, and the int8 variant built and
    scored on the same rows. Re-running logs the same values."""

    template_fields: Sequence[str] = ("plan", "profile", "train")

    def __init__(self, *, profile: Any, train: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.profile, self.train = profile, train

    def execute(self, context: Any) -> dict[str, Any]:
        from ray_jobs.specs import evaluation_spec

        spec = evaluation_spec(
            self.profile,
            tracking_uri=self.mlflow.tracking_uri,
            mlflow_run_id=self.train["mlflow_run_id"],
            model_uri=self.train["model_uri"],
            target_metric=self.contract.target_metric,
        )
        metrics = self.run_job(context, "eval", "ray_jobs.evaluate", spec, timeout_s=600)
        name = self.contract.target_metric
        self.log.info(
            "Test %s %.4f (95%% CI %.4f-%.4f) on %d rows; test loss %.4f; all: %s; variants "
            "(score) %s",
            name,
            metrics[f"test_{name}"],
            *sorted(
                self.contract.quality_metric.value(metrics[k])
                for k in ("test_score_ci_low", "test_score_ci_high")
            ),
            metrics["test_rows"],
            metrics["test_loss"],
            {
                k: round(v, 4)
                for k, v in metrics.items()
                if k.startswith("test_") and "_ci_" not in k and isinstance(v, float)
            },
            {v: round(d["accuracy"], 4) for v, d in metrics["variants"].items()},
        )
        return metrics
