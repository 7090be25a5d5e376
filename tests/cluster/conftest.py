"""One production topology per session, shared by the cluster and browser tests."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.topology import Topology

#: The model the cluster tests serve and retrain (the browser journey's run makes it champion).
MODEL = "cluster-digits"


def tails(topo: Topology) -> str:
    out = []
    for log in sorted((topo.root / "logs").glob("*.log")):
        out.append(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}")
    # the task logs written last (a failed task's own error is there, not in the services')
    task_logs = sorted(
        (topo.root / "airflow" / "logs").glob("dag_id=*/**/*.log"), key=lambda p: p.stat().st_mtime
    )
    for log in task_logs[-2:]:
        name = "/".join(log.parts[-3:])
        out.append(f"--- {name}\n{log.read_text(errors='replace')[-2500:]}")
    return "\n".join(out)


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology]:
    topo = Topology(root=Path(tempfile.mkdtemp(prefix="slaflow-cluster-", dir="/tmp")))
    try:
        try:
            topo.start()
        except Exception as exc:
            raise RuntimeError(f"{exc}\n{tails(topo)}") from exc
        deadline = time.monotonic() + 180
        while topo.api("GET", "/dags/ml_lifecycle")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the DAG processor never parsed ml_lifecycle\n{tails(topo)}")
            time.sleep(3)
        # this process's MLflow clients sign in as the topology's other clients do
        saved = {k: os.environ.get(k) for k in _MLFLOW_CREDENTIALS}
        os.environ.update({k: topo.env()[k] for k in _MLFLOW_CREDENTIALS})
        try:
            yield topo
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    finally:
        topo.stop()


_MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


_UNDEPLOY = (
    "import sys; from operators.hooks import ServeHook; "
    "print(ServeHook(None).undeploy(sys.argv[1]))"
)


def undeploy(topo: Topology, name: str) -> None:
    """Take a served model off the topology's endpoint (``ServeHook.undeploy``), in a process
    of its own (this one may hold the suite's Ray). Its replicas hold CPUs of the cluster's 4:
    a later test's training workers would wait for them until its deadline."""
    import requests

    proc = subprocess.run(
        [sys.executable, "-c", _UNDEPLOY, name],
        env=topo.env(),
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    url = f"http://127.0.0.1:{topo.env()['SLAFLOW_SERVE_PORT']}/{name}"
    assert requests.post(url, json={"instances": [[0.0]]}, timeout=10).status_code == 404


def wait_run(
    topo: Topology, run_id: str, dag_id: str = "ml_lifecycle", timeout_s: float = 1200
) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, run = topo.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        if run and run.get("state") in ("success", "failed"):
            return str(run["state"])
        time.sleep(2)
    raise AssertionError(f"run {run_id} did not finish within {timeout_s:.0f}s")


def xcom(topo: Topology, run_id: str, task: str, dag_id: str = "ml_lifecycle") -> Any:
    code, body = topo.api(
        "GET",
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task}"
        "/xcomEntries/return_value?deserialize=true&stringify=false",
    )
    assert code == 200, body
    value = body["value"]
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return ast.literal_eval(value)
    return value


def wait_parked(topo: Topology, run_id: str, task_id: str, timeout_s: float = 120) -> None:
    """Wait until the scheduler has processed the exit of the worker that parked ``task_id`` in
    ``awaiting_input``. Airflow 3.3 race: a response that resumes the task before the scheduler
    sees that exit gets the new try failed ("finished with state success, but the task
    instance's state attribute is queued"; the resumed worker's ``/run`` answers 409). A person
    takes longer than that; a test clicking right away on a loaded 2-core runner may not."""
    deadline = time.monotonic() + timeout_s
    log = topo.root / "logs" / "airflow-scheduler.log"
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if (
                "Received executor event with state success" in line
                and f"task_id='{task_id}'" in line
                and run_id in line
            ):
                return
        time.sleep(1)
    raise AssertionError(f"the scheduler never saw {task_id}'s parking worker exit\n{tails(topo)}")


def task_states(topo: Topology, run_id: str, dag_id: str = "ml_lifecycle") -> dict[str, str]:
    _, tis = topo.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
    return {t["task_id"]: t["state"] for t in tis["task_instances"]}
