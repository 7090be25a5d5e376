"""Endpoint resolution: Airflow connection, then environment, then embedded default."""

from __future__ import annotations

import json

import pytest

from operators.hooks import MlflowHook, RayHook, SparkHook

pytestmark = pytest.mark.unit


def _conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLAFLOW_SPARK_MASTER", "spark://from-env:7077")
    assert SparkHook().master == "spark://from-env:7077"
    assert MlflowHook().tracking_uri.startswith("sqlite:///")
    assert MlflowHook().artifact_location is not None


def test_connections_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLAFLOW_SPARK_MASTER", "spark://from-env:7077")
    _conn(monkeypatch, "slaflow_spark", conn_type="spark", host="spark://master", port=7077)
    _conn(
        monkeypatch,
        "slaflow_mlflow",
        conn_type="http",
        host="https://mlflow.internal",
        login="alice",
        password="s3cret",
    )
    _conn(
        monkeypatch,
        "slaflow_ray",
        conn_type="http",
        host="ray-head",
        port=8265,
        extra={"address": "ray-head:6379", "serve_url": "http://ray-head:8000"},
    )
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert SparkHook().master == "spark://master:7077"
    mlflow = MlflowHook()
    assert mlflow.tracking_uri == "https://mlflow.internal"
    assert mlflow.artifact_location is None  # the server decides
    import os

    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    ep = RayHook().endpoints
    assert ep["dashboard_url"] == "http://ray-head:8265"
    assert ep["address"] == "ray-head:6379" and ep["serve_url"] == "http://ray-head:8000"


def test_unreachable_ray_names_the_endpoint_and_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from operators.hooks import EndpointError

    monkeypatch.setenv("SLAFLOW_RAY_DASHBOARD_URL", "http://127.0.0.1:9")
    with pytest.raises(EndpointError, match=r"127\.0\.0\.1:9 .*SLAFLOW_RAY_DASHBOARD_URL"):
        _ = RayHook(ray_conn_id=None).job_client


def test_gone_spark_master_fails_fast_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from operators.hooks import EndpointError

    monkeypatch.setenv("SLAFLOW_SPARK_MASTER", "spark://127.0.0.1:9")
    with pytest.raises(EndpointError, match=r"spark://127\.0\.0\.1:9.*SLAFLOW_SPARK_MASTER"):
        SparkHook(spark_conn_id=None).session("never-started")


def test_down_mlflow_server_fails_fast_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from operators.hooks import EndpointError

    monkeypatch.setenv("SLAFLOW_MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(EndpointError, match=r"127\.0\.0\.1:9.*SLAFLOW_MLFLOW_TRACKING_URI"):
        _ = MlflowHook(mlflow_conn_id=None).client


def test_profile_shapes_and_batches_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from slaflow import settings

    monkeypatch.delenv("SLAFLOW_PROFILE_CPUS", raising=False)
    monkeypatch.delenv("SLAFLOW_PROFILE_BATCHES", raising=False)
    assert settings.profile_cpus() == [0.5, 1.0]
    assert settings.profile_batches() == [1, 16]
    monkeypatch.setenv("SLAFLOW_PROFILE_CPUS", " 2, 0.25 ")
    monkeypatch.setenv("SLAFLOW_PROFILE_BATCHES", "1,,8")
    assert settings.profile_cpus() == [2.0, 0.25]
    assert settings.profile_batches() == [1, 8]
    for var, raw, words in (
        ("SLAFLOW_PROFILE_CPUS", "0", "above 0.0"),
        ("SLAFLOW_PROFILE_CPUS", "one", "separated by commas"),
        ("SLAFLOW_PROFILE_BATCHES", "0,16", "of at least 1"),
        ("SLAFLOW_PROFILE_BATCHES", "1.5", "separated by commas"),
        ("SLAFLOW_PROFILE_BATCHES", " ", "of at least 1"),
    ):
        monkeypatch.setenv(var, raw)
        fn = settings.profile_cpus if var.endswith("CPUS") else settings.profile_batches
        with pytest.raises(ValueError, match=f"{var}=.*{words}"):
            fn()
        monkeypatch.delenv(var)


def test_the_ray_data_floor_is_read_and_a_bad_one_names_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from slaflow.settings import ray_data_min_bytes

    monkeypatch.delenv("SLAFLOW_RAY_DATA_MIN_BYTES", raising=False)
    assert ray_data_min_bytes() == 64 << 20
    monkeypatch.setenv("SLAFLOW_RAY_DATA_MIN_BYTES", "0")
    assert ray_data_min_bytes() == 0
    for bad, words in (("64MB", "whole number of bytes"), ("-1", "0 or more")):
        monkeypatch.setenv("SLAFLOW_RAY_DATA_MIN_BYTES", bad)
        with pytest.raises(ValueError, match=f"SLAFLOW_RAY_DATA_MIN_BYTES='{bad}'.*{words}"):
            ray_data_min_bytes()
