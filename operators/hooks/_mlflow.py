"""MLflow tracking and registry client."""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from operators.hooks._common import EndpointError, connection
from slaflow.settings import Endpoints, mlflow_artifact_root


class MlflowHook(BaseHook):
    """MLflow tracking server / registry.

    Connection ``slaflow_mlflow``: ``host`` = the full tracking URI (``http://mlflow:5000``),
    login/password for basic auth (passed as MLFLOW_TRACKING_USERNAME/PASSWORD).
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "slaflow_mlflow"
    hook_name = "slaflow MLflow"

    def __init__(self, mlflow_conn_id: str | None = default_conn_name) -> None:
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def tracking_uri(self) -> str:
        conn = connection(self.mlflow_conn_id)
        if conn is not None and conn.host:
            if conn.login:
                os.environ["MLFLOW_TRACKING_USERNAME"] = conn.login
                os.environ["MLFLOW_TRACKING_PASSWORD"] = conn.password or ""
            host = conn.host if "://" in conn.host else f"http://{conn.host}"
            return f"{host}:{conn.port}" if conn.port else host
        return Endpoints.from_env().mlflow_tracking_uri

    @property
    def artifact_location(self) -> str | None:
        """Artifact root for new experiments on the embedded store; a server decides its own."""
        return None if self.tracking_uri.startswith("http") else mlflow_artifact_root()

    def _probe_server(self) -> None:
        """Fail in seconds when a tracking server is down (MLflow's client retries for minutes)."""
        import requests

        try:
            requests.get(f"{self.tracking_uri.rstrip('/')}/health", timeout=10)
        except requests.RequestException as exc:
            raise EndpointError(
                f"cannot reach the MLflow server at {self.tracking_uri} ({type(exc).__name__}). "
                f"Start it, or set SLAFLOW_MLFLOW_TRACKING_URI (or the '{self.mlflow_conn_id}' "
                f"connection) to a reachable tracking URI"
            ) from exc

    @cached_property
    def client(self) -> Any:
        if self.tracking_uri.startswith("http"):
            self._probe_server()
        if self.tracking_uri.startswith("sqlite:///"):
            from pathlib import Path

            Path(self.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        import mlflow
        from mlflow.tracking import MlflowClient

        # The registry resolves a ``models:/m-...`` source through the process-wide tracking
        # URI, not the client's: set both, or registration looks in the wrong store.
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        try:
            client.search_experiments(max_results=1)
        except Exception as exc:
            raise EndpointError(
                f"cannot reach MLflow at {self.tracking_uri} ({type(exc).__name__}: {exc}). "
                f"Check the server, or set SLAFLOW_MLFLOW_TRACKING_URI (or the "
                f"'{self.mlflow_conn_id}' connection)"
            ) from exc
        return client

    def load_dict(self, uri: str) -> dict[str, Any]:
        """A JSON artifact (``runs:/<id>/path.json``) from this hook's store."""
        assert self.client is not None  # sets the process-wide URIs artifacts resolve with
        import mlflow

        return dict(mlflow.artifacts.load_dict(uri))
