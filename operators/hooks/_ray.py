"""The Ray cluster: Job API client and driver connection."""

from __future__ import annotations

import logging
import os
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from operators.hooks._common import EndpointError, connection
from slaflow.settings import Endpoints, ensure_ray_client_env


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
        out = {
            "dashboard_url": env.ray_dashboard_url,
            "address": env.ray_address,
            "serve_url": env.serve_url,
            "serve_host": env.serve_host,
            "serve_port": str(env.serve_port),
        }
        conn = connection(self.ray_conn_id)
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
        """CPUs no task, actor or Serve replica holds on the cluster now."""
        return float(self.available_resources().get("CPU", 0.0))

    def available_resources(self) -> dict[str, float]:
        ray = self.connect()
        return {k: float(v) for k, v in ray.available_resources().items()}

    def cluster_resources(self) -> dict[str, float]:
        ray = self.connect()
        return {k: float(v) for k, v in ray.cluster_resources().items()}

    def alive_nodes(self) -> list[dict[str, float]]:
        """The resources of each alive node (the node type key of serving profiles)."""
        ray = self.connect()
        return [
            {k: float(v) for k, v in n["Resources"].items()} for n in ray.nodes() if n.get("Alive")
        ]
