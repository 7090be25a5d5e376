"""Extra links on the lifecycle operators: MLflow run and model version, Ray jobs, endpoint.

Each operator pushes the full URL to the link's XCom key in ``execute`` (Airflow 3's API
server reads links from XCom); ``get_link`` reads it back for other callers.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink


class _XComLink(BaseOperatorLink):
    key: str = ""

    @property
    def xcom_key(self) -> str:
        return self.key

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return str(XCom.get_value(ti_key=ti_key, key=self.key) or "")


class MlflowRunLink(_XComLink):
    name = "MLflow run"
    key = "mlflow_run_url"


class ModelVersionLink(_XComLink):
    name = "MLflow model version"
    key = "model_version_url"


class RayDashboardLink(_XComLink):
    name = "Ray jobs"
    key = "ray_dashboard_url"


class ServeEndpointLink(_XComLink):
    name = "Serve endpoint"
    key = "endpoint_url"
