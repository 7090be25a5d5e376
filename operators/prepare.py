"""Data preparation: a Spark job that validates, splits and writes the data as Parquet."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from operators.base import PlannedStageOperator
from operators.hooks import SparkHook


class PrepareDataOperator(PlannedStageOperator):
    """Spark job: validate, split and write Parquet under ``SLAFLOW_DATA_DIR/<run key>``.

    With ``prepare_deadline_s`` it runs under the dynaSpark controller. Writes with mode
    overwrite into a folder owned by this DAG run: a retry redoes it whole. Splits prepared
    before from the same content (a local file's size and time, or the built-in data set),
    label column, fractions and seed, by the same version of the job, are reused instead of
    running Spark again; never under a deadline (that run exists to run Spark under control).
    """

    template_fields: Sequence[str] = ("plan",)

    def __init__(self, *, spark_conn_id: str = "slaflow_spark", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spark_conn_id = spark_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from slaflow.settings import Endpoints, home
        from spark_jobs.deadline import (
            SparkDeadlineInfeasible,
            contract_profile_path,
            controlled_conf,
            run_with_deadline,
        )
        from spark_jobs.prepare import DataError, reuse_key, run_prepare
        from spark_jobs.prepared import find_prepared, public_profile, record_prepared

        contract = self.contract
        data_dir = Endpoints.from_env().data_dir
        options = {
            "task": contract.task,
            "feature_columns": list(contract.feature_columns),
            "drop_columns": list(contract.drop_columns),
            "split": contract.split,
            "time_column": contract.time_column,
        }
        key = (
            None
            if contract.prepare_deadline_s > 0
            else reuse_key(
                source=contract.data_source,
                label_column=contract.label_column,
                validation_fraction=contract.validation_fraction,
                test_fraction=contract.test_fraction,
                seed=contract.seed,
                options=options,
            )
        )
        found = None if key is None else find_prepared(data_dir, key)
        if found is not None:
            self.log.info(
                "Reusing the splits prepared from the same data and settings (%s): %s; split %s",
                key,
                found["paths"]["train"].rsplit("/", 2)[0],
                found["split_counts"],
            )
            self._check_task(found)
            return public_profile({**found, "reused": key, "prepare_seconds": 0.0})
        hook = SparkHook(self.spark_conn_id)
        master = contract.spark_master or hook.master
        output = f"{data_dir.rstrip('/')}/{self.run_plan.run_key}"
        controlled = contract.prepare_deadline_s > 0
        self.log.info(
            "Preparing %s on Spark master %s -> %s%s",
            contract.data_source,
            master,
            output,
            f" (deadline {contract.prepare_deadline_s:g}s, at most "
            f"{contract.prepare_max_cores} cores)"
            if controlled
            else "",
        )
        conf = controlled_conf(master, contract.prepare_max_cores) if controlled else {}
        spark = hook.session(f"slaflow-prepare-{self.run_plan.run_key}", master=master, conf=conf)
        started = time.monotonic()

        def work() -> dict[str, Any]:
            return run_prepare(
                spark,
                source=contract.data_source,
                label_column=contract.label_column,
                output_dir=output,
                validation_fraction=contract.validation_fraction,
                test_fraction=contract.test_fraction,
                seed=contract.seed,
                cache_dir=home() / "datasets",
                options=options,
            )

        try:
            if not controlled:
                profile = work()
            else:
                profile, report = run_with_deadline(
                    spark,
                    work,
                    deadline_s=contract.prepare_deadline_s,
                    max_cores=contract.prepare_max_cores,
                    profile_path=contract_profile_path("prepare", contract, master),
                    on_infeasible=contract.on_infeasible,
                    log=self.log.info,
                )
                report["timeline"] = report.get("timeline", [])[-50:]
                profile["spark_deadline"] = report
                (self.log.info if report["met"] else self.log.warning)(
                    "Spark deadline (%s): finished in %.1fs of %.1fs, %.1f core-seconds, %s",
                    report["mode"],
                    report["elapsed_s"],
                    contract.prepare_deadline_s,
                    report["core_seconds"],
                    "met" if report["met"] else "MISSED",
                )
        except DataError as exc:
            raise AirflowFailException(f"data rejected: {exc}") from exc
        except SparkDeadlineInfeasible as exc:
            raise AirflowFailException(
                f"contract field 'prepare_deadline_s': {exc} (or set on_infeasible to "
                f"best_effort to prepare on all prepare_max_cores anyway)"
            ) from exc
        profile["prepare_seconds"] = time.monotonic() - started
        self.log.info(
            "Rows read %d (dropped incomplete: %d, malformed: %d); %s split %s; task %s; "
            "%d feature columns (%d categorical: %s) -> %d model inputs; %d classes",
            profile["rows_read"],
            profile["rows_dropped_incomplete"],
            profile["rows_dropped_malformed"],
            profile["split"],
            profile["split_counts"],
            profile["task"],
            len(profile["input_columns"]),
            len(profile["categorical_columns"]),
            profile["categorical_columns"][:10],
            len(profile["feature_names"]),
            len(profile["classes"]),
        )
        self._check_task(profile)
        if profile["rows_dropped_malformed"]:
            self.log.warning(
                "Malformed values (unparsable numbers) per column: %s; rows with more fields "
                "than the header: %d; those rows were dropped",
                profile["malformed_values_by_column"],
                profile.get("rows_dropped_extra_fields", 0),
            )
        if key is not None:
            record_prepared(data_dir, key, profile)
        return public_profile(profile)

    def _check_task(self, profile: dict[str, Any]) -> None:
        """The data's task must be the one the target metric judges."""
        from policies import task_fit_problem

        problem = task_fit_problem(
            self.contract.target_metric,
            profile["task"],
            len(profile["classes"]),
            self.contract.label_column,
        )
        if problem:
            raise AirflowFailException(problem)
