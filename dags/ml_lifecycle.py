"""ml_lifecycle: plan -> prepare -> feasibility -> train -> evaluate -> register -> promote
-> deploy -> verify.

Composition only: every stage is an operator from ``operators.lifecycle``; the trigger form is
the run contract (``operators.params``). Nothing heavy is imported at parse time.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from operators.lifecycle import (
    DeployModelOperator,
    EvaluateModelOperator,
    FeasibilityOperator,
    PlanRunOperator,
    PrepareDataOperator,
    PromoteModelOperator,
    RegisterModelOperator,
    TrainModelOperator,
    VerifyEndpointOperator,
)
from operators.params import contract_params


def _xcom(task_id: str) -> str:
    return "{{ ti.xcom_pull(task_ids='" + task_id + "') }}"


with DAG(
    dag_id="ml_lifecycle",
    description="Train, evaluate, register, promote and serve a model under a run contract",
    schedule=None,
    catchup=False,
    params=contract_params(),
    render_template_as_native_obj=True,
    max_active_runs=2,
    tags=["slaflow", "ml"],
    doc_md=__doc__,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
) as dag:
    plan = PlanRunOperator(task_id="plan")
    prepare = PrepareDataOperator(task_id="prepare", plan=_xcom("plan"))
    feasibility = FeasibilityOperator(task_id="feasibility", plan=_xcom("plan"),
                                      profile=_xcom("prepare"))
    train = TrainModelOperator(task_id="train", plan=_xcom("plan"), profile=_xcom("prepare"),
                               feasibility=_xcom("feasibility"))
    evaluate = EvaluateModelOperator(task_id="evaluate", plan=_xcom("plan"),
                                     profile=_xcom("prepare"), train=_xcom("train"))
    register = RegisterModelOperator(task_id="register", plan=_xcom("plan"),
                                     train=_xcom("train"), evaluation=_xcom("evaluate"))
    promote = PromoteModelOperator(task_id="promote", plan=_xcom("plan"),
                                   evaluation=_xcom("evaluate"), registration=_xcom("register"))
    deploy = DeployModelOperator(task_id="deploy", plan=_xcom("plan"),
                                 promotion=_xcom("promote"))
    verify = VerifyEndpointOperator(
        task_id="verify", plan=_xcom("plan"), profile=_xcom("prepare"), train=_xcom("train"),
        evaluation=_xcom("evaluate"), registration=_xcom("register"),
        promotion=_xcom("promote"), deployment=_xcom("deploy"))

    plan >> prepare >> feasibility >> train >> evaluate >> register >> promote >> deploy >> verify
