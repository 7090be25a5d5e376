"""ml_lifecycle: plan -> prepare -> feasibility -> train -> evaluate -> register -> gate
-> review -> promote -> profile_serving -> deploy -> verify.

Composition only: every stage is an operator from ``operators``; the trigger form is the run
contract (``operators.params``). Runs start three ways: the trigger form (or REST), a change of
the training data (the ``slaflow_training_data`` Asset, see ``training_data_watch``), and, when
``SLAFLOW_RETRAIN_SCHEDULE`` holds a cron expression, on that schedule. ``review`` waits for a
person only when the contract's ``review_policy`` says the gate's decision is theirs.
Nothing heavy is imported at parse time.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable

from operators.data import training_data_asset
from operators.params import contract_params
from operators.plan import FeasibilityOperator, PlanRunOperator
from operators.prepare import PrepareDataOperator
from operators.profile import ProfileServingOperator
from operators.registry import GateOperator, PromoteModelOperator, RegisterModelOperator
from operators.review import ReviewPromotionOperator
from operators.serving import DeployModelOperator
from operators.train import EvaluateModelOperator, TrainModelOperator
from operators.verify import VerifyEndpointOperator
from slaflow.settings import retrain_schedule


def _xcom(task_id: str) -> str:
    return "{{ ti.xcom_pull(task_ids='" + task_id + "') }}"


def _schedule() -> object:
    cron = retrain_schedule()
    if cron is None:
        return [training_data_asset()]
    return AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=[training_data_asset()]
    )


with DAG(
    dag_id="ml_lifecycle",
    description="Train, evaluate, register, promote and serve a model under a run contract",
    schedule=_schedule(),
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
    feasibility = FeasibilityOperator(
        task_id="feasibility", plan=_xcom("plan"), profile=_xcom("prepare")
    )
    train = TrainModelOperator(
        task_id="train",
        plan=_xcom("plan"),
        profile=_xcom("prepare"),
        feasibility=_xcom("feasibility"),
    )
    evaluate = EvaluateModelOperator(
        task_id="evaluate", plan=_xcom("plan"), profile=_xcom("prepare"), train=_xcom("train")
    )
    register = RegisterModelOperator(
        task_id="register", plan=_xcom("plan"), train=_xcom("train"), evaluation=_xcom("evaluate")
    )
    gate = GateOperator(
        task_id="gate",
        plan=_xcom("plan"),
        evaluation=_xcom("evaluate"),
        registration=_xcom("register"),
    )
    review = ReviewPromotionOperator(
        task_id="review", plan=_xcom("plan"), gate=_xcom("gate"), retries=0
    )
    promote = PromoteModelOperator(
        task_id="promote",
        plan=_xcom("plan"),
        evaluation=_xcom("evaluate"),
        registration=_xcom("register"),
        gate=_xcom("gate"),
        review=_xcom("review"),
    )
    profile_serving = ProfileServingOperator(
        task_id="profile_serving",
        plan=_xcom("plan"),
        train=_xcom("train"),
        evaluation=_xcom("evaluate"),
        promotion=_xcom("promote"),
    )
    deploy = DeployModelOperator(
        task_id="deploy",
        plan=_xcom("plan"),
        promotion=_xcom("promote"),
        serving_profile=_xcom("profile_serving"),
        data_profile=_xcom("prepare"),
    )
    verify = VerifyEndpointOperator(
        task_id="verify",
        plan=_xcom("plan"),
        profile=_xcom("prepare"),
        train=_xcom("train"),
        evaluation=_xcom("evaluate"),
        registration=_xcom("register"),
        promotion=_xcom("promote"),
        deployment=_xcom("deploy"),
    )

    (
        plan
        >> prepare
        >> feasibility
        >> train
        >> evaluate
        >> register
        >> gate
        >> review
        >> promote
        >> profile_serving
        >> deploy
        >> verify
    )
