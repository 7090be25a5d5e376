"""What every hook shares: connection lookup and the endpoint error."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook


def connection(conn_id: str | None) -> Any | None:
    if not conn_id:
        return None
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


class EndpointError(RuntimeError):
    """An engine cannot be reached; the message names the endpoint and the setting to fix."""
