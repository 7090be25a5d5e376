"""ml_undeploy: take a model off the Serve endpoint, registry untouched.

One trigger (form field: the model name), or ``make undeploy MODEL=name``. The model's router
and every version application are deleted, so the CPUs their replicas held go back to the
cluster (training and other models need them); ``champion`` and every version stay in MLflow,
and the next deploy of the model serves its champion again.
"""

from __future__ import annotations

from airflow.sdk import DAG

from operators.params import model_name_param
from operators.serving import UndeployModelOperator

with DAG(
    dag_id="ml_undeploy",
    description="Take a model off the Serve endpoint (its replicas' CPUs return to the cluster)",
    schedule=None,
    catchup=False,
    params={"model_name": model_name_param("Registered model to take off the endpoint.")},
    max_active_runs=1,
    tags=["slaflow", "ml"],
    doc_md=__doc__,
) as dag:
    UndeployModelOperator(task_id="undeploy", retries=1)
