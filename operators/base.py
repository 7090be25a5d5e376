"""What every stage operator shares: its hooks, the run plan it reads, progress lines, and
running work as a Ray Job (submit or attach, stream logs, stop on kill).

An operator reads its inputs (templated XComs, rendered as native objects), asks a policy,
calls a hook and records the result; the decisions live in ``policies``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from operators.hooks import MlflowHook, RayHook, ServeHook
from operators.ray_job import RayJobFailed, RayJobRunner, submission_base_id
from policies import RunContract, RunPlan


def run_key(context: Any) -> str:
    """The id of this DAG run across tasks and retries (MLflow run key, data folder)."""
    return submission_base_id("run", context["dag"].dag_id, context["run_id"])


def run_marker(context: Any) -> str:
    """Who did it, as the registry records it (lease holder, intent, rollback marker,
    deployed_by): ``dag_id/run_id``, the same for every try of one run."""
    return f"{context['dag'].dag_id}/{context['run_id']}"


def stage_label(context: Any, task_id: str) -> str:
    ids = list(context["dag"].task_ids)
    k = ids.index(task_id) + 1 if task_id in ids else 0
    return f"{context['dag'].dag_id} stage {k}/{len(ids)} {task_id}"


class StageOperator(BaseOperator):
    """A lifecycle stage: which connections it uses, its hooks, and a ``[progress]`` line at
    its start and end (the demo's console reads them)."""

    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        ray_conn_id: str = "slaflow_ray",
        mlflow_conn_id: str = "slaflow_mlflow",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ray_conn_id = ray_conn_id
        self.mlflow_conn_id = mlflow_conn_id

    def pre_execute(self, context: Any) -> None:
        self._stage_started = time.monotonic()
        self.log.info("[progress] %s started", stage_label(context, self.task_id))
        # The prepare task publishes counts only (spark_jobs.prepared.public_profile); a stage
        # that reads the data's profile gets the whole of it from beside the splits.
        for name in ("profile", "data_profile"):
            value = getattr(self, name, None)
            if isinstance(value, dict) and "profile_file" in value:
                from spark_jobs.prepared import full_profile

                setattr(self, name, full_profile(value))

    def post_execute(self, context: Any, result: Any = None) -> None:
        took = time.monotonic() - getattr(self, "_stage_started", time.monotonic())
        self.log.info("[progress] %s done in %.1fs", stage_label(context, self.task_id), took)

    @cached_property
    def ray(self) -> RayHook:
        return RayHook(self.ray_conn_id)

    @cached_property
    def mlflow(self) -> MlflowHook:
        return MlflowHook(self.mlflow_conn_id)

    @cached_property
    def serve(self) -> ServeHook:
        return ServeHook(self.ray_conn_id, ray_hook=self.ray)


class PlannedStageOperator(StageOperator):
    """A stage after ``plan``: it reads the run plan (the contract validated once there)."""

    template_fields: Sequence[str] = ("plan",)

    def __init__(self, *, plan: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan

    @cached_property
    def run_plan(self) -> RunPlan:
        return RunPlan.from_dict(self.plan)

    @property
    def contract(self) -> RunContract:
        return self.run_plan.contract


class RayJobStageOperator(PlannedStageOperator):
    """A stage whose work runs as a Ray Job: submit-or-attach, stream logs, stop on kill."""

    def run_job(
        self, context: Any, stage: str, module: str, spec: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        from slaflow.settings import Endpoints

        self._runner = RayJobRunner(
            self.ray.job_client,
            self.log.info,
            spec_dir=f"{Endpoints.from_env().data_dir}/job_specs",
        )
        base_id = submission_base_id(stage, context["dag"].dag_id, context["run_id"])
        try:
            return self._runner.run(base_id=base_id, module=module, spec=spec, timeout_s=timeout_s)
        except RayJobFailed as exc:
            raise RuntimeError(str(exc)) from exc  # retryable: the next try attaches/resumes

    @property
    def last_submission_id(self) -> str | None:
        runner = getattr(self, "_runner", None)
        return None if runner is None else getattr(runner, "last_submission_id", None)

    def on_kill(self) -> None:
        runner = getattr(self, "_runner", None)
        if runner is not None and self.last_submission_id:
            runner.stop(self.last_submission_id)
