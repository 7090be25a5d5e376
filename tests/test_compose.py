"""docker-compose.yml agrees with what the code reads (it cannot be started on these machines)."""

from __future__ import annotations

import configparser
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
    airflow = compose["x-airflow-env"]
    assert "postgres:5432/airflow" in airflow["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["RAY_AUTH_MODE"] == "token"


def test_published_ports_are_loopback_only(compose: dict) -> None:
    for name, svc in compose["services"].items():
        for mapping in svc.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), (name, mapping)


def test_shared_storage_reaches_every_node_that_reads_or_writes_data(compose: dict) -> None:
    services = compose["services"]
    for name in ("ray-head", "ray-worker", "spark-worker", "mlflow", "airflow-scheduler"):
        assert "shared:/shared" in services[name]["volumes"], name


SECRET = re.compile(r"\$\{([A-Z_]+)(:?[-?])?([^}]*)\}")


def test_every_secret_is_required_and_none_has_a_default() -> None:
    """compose refuses to start without each secret (``${VAR:?message}``); no default value
    (``${VAR:-...}``) and no literal password ships in the file."""
    text = (REPO / "docker-compose.yml").read_text()
    used = {m.group(1): (m.group(2), m.group(3)) for m in SECRET.finditer(text)}
    assert set(used) >= {
        "RAY_AUTH_TOKEN",
        "POSTGRES_PASSWORD",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_FERNET_KEY",
        "MLFLOW_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SECRET",
    }
    for name, (kind, message) in used.items():
        assert kind == ":?" and "export" in message, name
    assert "change-me" not in text and "slaflow:slaflow@" not in text


def test_each_service_gets_only_the_secrets_it_needs(compose: dict) -> None:
    services = compose["services"]
    airflow_only = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__CORE__FERNET_KEY",
    }
    for name in ("ray-head", "ray-worker", "spark-master", "spark-worker", "mlflow"):
        env = services[name].get("environment", {})
        assert not airflow_only & set(env), name
    for name in ("spark-master", "spark-worker"):
        assert "MLFLOW_TRACKING_PASSWORD" not in services[name]["environment"], name
    for name in ("airflow-api-server", "airflow-scheduler", "airflow-init"):
        env = services[name]["environment"]
        assert airflow_only <= set(env), name
        assert env["MLFLOW_TRACKING_USERNAME"] == "admin", name
    for name in ("ray-head", "ray-worker"):  # their jobs log runs and models
        assert "MLFLOW_TRACKING_PASSWORD" in services[name]["environment"], name


def test_mlflow_runs_with_basic_auth_from_its_own_store(compose: dict) -> None:
    mlflow = compose["services"]["mlflow"]
    assert "--app-name basic-auth" in mlflow["command"]
    env = mlflow["environment"]
    ini = env["MLFLOW_AUTH_CONFIG_PATH"].replace("/opt/slaflow/", "")
    config = configparser.ConfigParser()
    config.read(REPO / ini)
    assert "admin_password" not in config["mlflow"]  # from the environment only
    store = config["mlflow"]["database_uri"].removeprefix("sqlite:///")
    assert any(
        store.startswith(v.split(":")[1] + "/")
        for v in mlflow["volumes"]
        if v.startswith("mlflow-auth:")
    )
    assert "mlflow-auth" in compose["volumes"]


def test_every_long_running_service_restarts_when_it_exits(compose: dict) -> None:
    """Airflow's scheduler exits when its database goes away (tested: PostgreSQL restarted
    mid-run in tests/cluster); it must be started again, and so must every other service.
    The one-shot ``airflow db migrate`` must not run again."""
    services = compose["services"]
    for name, svc in services.items():
        if name == "airflow-init":
            assert "restart" not in svc, name
        else:
            assert svc.get("restart") == "unless-stopped", name
