"""docker-compose.yml agrees with what the code reads (it cannot be started on these machines)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_every_slaflow_variable_is_one_the_code_reads(compose: dict) -> None:
    code = "\n".join(p.read_text() for p in (REPO / "slaflow").glob("*.py"))
    read = set(re.findall(r'"(SLAFLOW_[A-Z_]+)"', code))
    env = compose["x-slaflow-env"]
    set_here = {k for k in env if k.startswith("SLAFLOW_")}
    assert set_here <= read, set_here - read


def test_endpoints_point_at_services_and_their_ports(compose: dict) -> None:
    env, services = compose["x-slaflow-env"], compose["services"]
    host, port = env["SLAFLOW_RAY_ADDRESS"].split(":")
    assert host == "ray-head" and f"--port={port}" in services["ray-head"]["command"]
    dash = urlparse(env["SLAFLOW_RAY_DASHBOARD_URL"])
    assert f"--dashboard-port={dash.port}" in services["ray-head"]["command"]
    assert f"{env['SLAFLOW_SERVE_PORT']}:{env['SLAFLOW_SERVE_PORT']}" in " ".join(
        services["ray-head"]["ports"]
    )
    mlflow = urlparse(env["SLAFLOW_MLFLOW_TRACKING_URI"])
    assert mlflow.hostname == "mlflow" and f"--port {mlflow.port}" in services["mlflow"]["command"]
    spark = urlparse(env["SLAFLOW_SPARK_MASTER"])
    assert (
        spark.hostname == "spark-master"
        and f"--port {spark.port}" in services["spark-master"]["command"]
    )
    assert "postgres:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["RAY_AUTH_MODE"] == "token"


def test_published_ports_are_loopback_only(compose: dict) -> None:
    for name, svc in compose["services"].items():
        for mapping in svc.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), (name, mapping)


def test_shared_storage_reaches_every_node_that_reads_or_writes_data(compose: dict) -> None:
    services = compose["services"]
    for name in ("ray-head", "ray-worker", "spark-worker", "mlflow", "airflow-scheduler"):
        assert "shared:/shared" in services[name]["volumes"], name
