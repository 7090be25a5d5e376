"""One production topology per session, shared by the cluster and browser tests."""

from __future__ import annotations

import ast
import json
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
        yield topo
    finally:
        topo.stop()


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


def task_states(topo: Topology, run_id: str, dag_id: str = "ml_lifecycle") -> dict[str, str]:
    _, tis = topo.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
    return {t["task_id"]: t["state"] for t in tis["task_instances"]}
