"""ml_rollback: put ``previous_champion`` back as ``champion`` and serve it.

One trigger (form field: the model name), or ``python -m slaflow.cli rollback --model NAME``.
The demoted version keeps its tags and gets ``slaflow.rolled_back_by``; with no
``previous_champion`` the run fails at once, saying so, and nothing moves.
"""

from __future__ import annotations

from airflow.sdk import DAG

from operators.params import model_name_param
from operators.registry import RollbackModelOperator
from operators.serving import DeployModelOperator

with DAG(
    dag_id="ml_rollback",
    description="Roll the champion back to previous_champion, registry and serving",
    schedule=None,
    catchup=False,
    params={
        "model_name": model_name_param(
            "Registered model whose champion goes back to its previous_champion."
        )
    },
    render_template_as_native_obj=True,
    max_active_runs=1,
    tags=["slaflow", "ml"],
    doc_md=__doc__,
) as dag:
    rollback = RollbackModelOperator(task_id="rollback", retries=1)
    deploy = DeployModelOperator(
        task_id="deploy",
        plan="{{ ti.xcom_pull(task_ids='rollback') }}",
        promotion="{{ ti.xcom_pull(task_ids='rollback') }}",
        canary=False,
    )
    rollback >> deploy
