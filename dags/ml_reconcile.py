"""ml_reconcile: make what the endpoint serves equal each model's ``champion`` alias.

Runs on ``SLAFLOW_RECONCILE_SCHEDULE`` (cron, default every 15 minutes) or when triggered
(form field: one model, or empty for every registered model). The ``check`` task asks
``policies.reconcile_action`` per model and records its reason on the champion version
(``slaflow.reconciled``); each model to repair gets a mapped ``deploy`` (no canary: nothing
healthy serves to compare with). It serves the champion again after a Ray head restart
dropped the Serve applications, after a deploy failed once the alias had moved, or after the
alias was moved by hand. It leaves alone models taken off with ``ml_undeploy``, models without
a champion, and deploys still in progress (for up to ``policies.DEPLOY_GRACE_S``).
"""

from __future__ import annotations

from airflow.sdk import DAG, CronTriggerTimetable, Param

from operators.reconcile import ReconcileServingOperator
from operators.serving import DeployModelOperator
from policies import FIELDS_BY_NAME
from slaflow.settings import reconcile_schedule

with DAG(
    dag_id="ml_reconcile",
    description="Serve each model's champion again where serving drifted from the registry",
    schedule=CronTriggerTimetable(reconcile_schedule(), timezone="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "model_name": Param(
            "",
            type="string",
            # the contract's rule for names, or empty: every registered model
            pattern=f"^$|{FIELDS_BY_NAME['model_name'].schema_pattern}",
            title="Model name",
            description="One registered model to reconcile; empty: every registered model.",
        )
    },
    tags=["slaflow", "ml"],
    doc_md=__doc__,
) as dag:
    check = ReconcileServingOperator(task_id="check", retries=1)
    DeployModelOperator.partial(
        task_id="deploy",
        canary=False,
        map_index_template="{{ task.plan['contract']['model_name'] }}",
    ).expand_kwargs(check.output)
