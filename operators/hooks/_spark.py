"""Spark sessions, local or on a cluster master."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from operators.hooks._common import EndpointError, connection
from slaflow.settings import Endpoints


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
        conn = connection(self.spark_conn_id)
        if conn is not None and conn.host:
            return f"{conn.host}:{conn.port}" if conn.port else conn.host
        return Endpoints.from_env().spark_master

    def _probe_master(self, master: str) -> None:
        """A standalone master that is gone would leave the job waiting for executors forever."""
        import socket

        if not master.startswith("spark://"):
            return
        for hostport in master[len("spark://") :].split(","):
            host, _, port = hostport.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
                return
            except (OSError, ValueError):
                continue
        raise EndpointError(
            f"cannot reach the Spark master {master}. Start it, or set the contract's "
            f"spark_master, SLAFLOW_SPARK_MASTER (or the '{self.spark_conn_id}' connection) to "
            f"a reachable master, or local[*]"
        )

    def session(
        self, app_name: str, master: str | None = None, conf: dict[str, str] | None = None
    ) -> Any:
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
        conn = connection(self.spark_conn_id)
        builder = (
            SparkSession.builder.master(master)
            .appName(app_name)
            .config("spark.sql.shuffle.partitions", "8")
            .config("spark.ui.showConsoleProgress", "false")
        )
        for key, value in {
            **(conn.extra_dejson if conn is not None else {}),
            **(conf or {}),
        }.items():
            builder = builder.config(key, str(value))
        try:
            return builder.getOrCreate()
        except Exception as exc:
            raise EndpointError(
                f"cannot start a Spark session on master {master} ({exc}). Check the "
                f"master, or set the contract's spark_master, SLAFLOW_SPARK_MASTER (or the "
                f"'{self.spark_conn_id}' connection)"
            ) from exc
