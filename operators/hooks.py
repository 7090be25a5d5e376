"""Hooks: the only place that builds clients for Ray, MLflow and Spark.

Each endpoint resolves, in order: an Airflow connection (``slaflow_ray``, ``slaflow_mlflow``,
``slaflow_spark``) if one is defined, else ``slaflow.settings.Endpoints`` (environment
variables, then embedded defaults). Heavy libraries are imported when a client is built,
never at DAG-parse time.
"""

from __future__ import annotations

import logging
import os
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from slaflow.settings import Endpoints, ensure_ray_client_env, mlflow_artifact_root


def _connection(conn_id: str | None) -> Any | None:
    if not conn_id:
        return None
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


class EndpointError(RuntimeError):
    """An engine cannot be reached; the message names the endpoint and the setting to fix."""


class RayHook(BaseHook):
    """Ray cluster: Job API client (training, evaluation) and a driver connection (Serve).

    Connection ``slaflow_ray``: ``host``/``port`` = the dashboard (Job API), extra
    ``{"address": "HOST:GCS_PORT", "serve_url": "http://HOST:8000"}``.
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = "slaflow_ray"
    hook_name = "slaflow Ray"

    def __init__(self, ray_conn_id: str | None = default_conn_name) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id

    @cached_property
    def endpoints(self) -> dict[str, str]:
        env = Endpoints.from_env()
        out = {"dashboard_url": env.ray_dashboard_url, "address": env.ray_address,
               "serve_url": env.serve_url, "serve_host": env.serve_host,
               "serve_port": str(env.serve_port)}
        conn = _connection(self.ray_conn_id)
        if conn is not None:
            extra = conn.extra_dejson
            if conn.host:
                scheme = conn.schema or "http"
                out["dashboard_url"] = f"{scheme}://{conn.host}:{conn.port or 8265}"
            out.update({k: str(extra[k]) for k in ("address", "serve_url") if k in extra})
            if conn.password:  # the cluster's auth token, kept in the connection's password
                os.environ["RAY_AUTH_TOKEN"] = conn.password
        return out

    @cached_property
    def job_client(self) -> Any:
        url = self.endpoints["dashboard_url"]  # first: a connection's token must precede import
        ensure_ray_client_env()
        from ray.job_submission import JobSubmissionClient

        try:
            return JobSubmissionClient(url)
        except Exception as exc:
            raise EndpointError(
                f"cannot reach the Ray Job API at {url} ({type(exc).__name__}: {exc}). "
                f"Start the embedded cluster with `make ray-up`, or set SLAFLOW_RAY_DASHBOARD_URL "
                f"(or the '{self.ray_conn_id}' connection) to your cluster's dashboard"
            ) from exc

    def connect(self) -> Any:
        """``ray.init`` to the cluster as a driver (idempotent within a process)."""
        address = self.endpoints["address"]  # first: a connection's token must precede import
        ensure_ray_client_env()
        import ray

        if not ray.is_initialized():
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            except Exception as exc:
                raise EndpointError(
                    f"cannot connect to the Ray cluster at {address} ({exc}). Start it with "
                    f"`make ray-up`, or set SLAFLOW_RAY_ADDRESS (or the '{self.ray_conn_id}' "
                    f"connection's extra 'address') to the cluster's GCS address"
                ) from exc
        return ray

    def free_cpus(self) -> float:
        """CPUs free on the cluster now, read through the Job API's head (no driver needed)."""
        ray = self.connect()
        return float(ray.available_resources().get("CPU", 0.0))


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
        conn = _connection(self.mlflow_conn_id)
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

            Path(self.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
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


class SparkHook(BaseHook):
    """Spark session in client mode: ``local[*]`` by default, or a cluster master.

    Connection ``slaflow_spark``: ``host`` = the master URL (``spark://host:7077``), extra =
    Spark conf entries.
    """

    conn_name_attr = "spark_conn_id"
    default_conn_name = "slaflow_spark"
    hook_name = "slaflow Spark"

    def __init__(self, spark_conn_id: str | None = default_conn_name) -> None:
        super().__init__()
        self.spark_conn_id = spark_conn_id

    @cached_property
    def master(self) -> str:
        conn = _connection(self.spark_conn_id)
        if conn is not None and conn.host:
            return f"{conn.host}:{conn.port}" if conn.port else conn.host
        return Endpoints.from_env().spark_master

    def _probe_master(self, master: str) -> None:
        """A standalone master that is gone would leave the job waiting for executors forever."""
        import socket

        if not master.startswith("spark://"):
            return
        for hostport in master[len("spark://"):].split(","):
            host, _, port = hostport.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
                return
            except (OSError, ValueError):
                continue
        raise EndpointError(
            f"cannot reach the Spark master {master}. Start it, or set the contract's "
            f"spark_master, SLAFLOW_SPARK_MASTER (or the '{self.spark_conn_id}' connection) to "
            f"a reachable master, or local[*]")

    def session(self, app_name: str, master: str | None = None,
                conf: dict[str, str] | None = None) -> Any:
        """A session on ``master`` (default: the connection's or SLAFLOW_SPARK_MASTER).

        An active session on another master in this process is stopped first: Spark's
        ``getOrCreate`` would otherwise hand it back and silently ignore the master asked for.
        """
        master = master or self.master
        self._probe_master(master)
        from pyspark import SparkContext
        from pyspark.sql import SparkSession

        running = SparkContext._active_spark_context
        if running is not None and running.master != master:
            current = SparkSession._instantiatedSession
            (current.stop() if current is not None else running.stop())
        conn = _connection(self.spark_conn_id)
        builder = (SparkSession.builder.master(master).appName(app_name)
                   .config("spark.sql.shuffle.partitions", "8")
                   .config("spark.ui.showConsoleProgress", "false"))
        for key, value in {**(conn.extra_dejson if conn is not None else {}),
                           **(conf or {})}.items():
            builder = builder.config(key, str(value))
        try:
            return builder.getOrCreate()
        except Exception as exc:
            raise EndpointError(
                f"cannot start a Spark session on master {master} ({exc}). Check the "
                f"master, or set the contract's spark_master, SLAFLOW_SPARK_MASTER (or the "
                f"'{self.spark_conn_id}' connection)"
            ) from exc
