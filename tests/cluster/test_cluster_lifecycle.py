"""ml_lifecycle on the production topology, triggered through Airflow's REST API."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from tests.cluster.conftest import tails as _tails
from tests.cluster.conftest import task_states
from tests.cluster.conftest import wait_run as _wait_run
from tests.cluster.conftest import xcom as _xcom
from tests.cluster.topology import PORTS, Topology

pytestmark = pytest.mark.cluster
MODEL = "cluster-digits"
CONF = {"model_name": MODEL, "max_epochs": 12, "hidden_units": [32], "target_accuracy": 0.85,
        "learning_rate": 0.01, "stop_margin": 0.01, "serving_node_resource": "large",
        # Static sizing holds max_workers (2) throughout, so the test can check that both
        # training workers landed on worker nodes; the deadline controller would pick 1.
        "resize_policy": "static",
        # traffic and a latency SLO a loaded 2-core machine can plan for: with every
        # service of the topology on 2 cores, one replica's unloaded p99 measured 90-112 ms
        # (see SMALL in tests/e2e)
        "expected_rps": 5.0, "peak_rps": 20.0, "latency_slo_ms": 300.0}
REQUEST = json.loads((Path(__file__).resolve().parents[2] / "examples" /
                      "digit_request.json").read_text())


def test_lifecycle_runs_on_postgres_mlflow_server_ray_and_spark_clusters(
        topology: Topology) -> None:
    topo = topology
    started = time.monotonic()
    deadline = time.monotonic() + 180
    while topo.api("GET", "/dags/ml_lifecycle")[0] != 200:
        assert time.monotonic() < deadline, "the DAG processor never parsed ml_lifecycle"
        time.sleep(3)

    code, body = topo.api("POST", "/dags/ml_lifecycle/dagRuns",
                          {"logical_date": None, "conf": {"deadline_s": -1}})
    assert code == 400 and "deadline_s" in json.dumps(body)

    code, run = topo.api("POST", "/dags/ml_lifecycle/dagRuns",
                         {"logical_date": None, "conf": CONF})
    assert code == 200, run
    run_id = run["dag_run_id"]
    state = _wait_run(topo, run_id)
    if state != "success":
        _, tis = topo.api("GET", f"/dags/ml_lifecycle/dagRuns/{run_id}/taskInstances")
        states = {t["task_id"]: t["state"] for t in tis["task_instances"]}
        pytest.fail(f"run {state}: {states}\n{_tails(topo)}")
    run_seconds = time.monotonic() - started

    summary = _xcom(topo, run_id, "verify")
    assert summary["alias"] == "champion" and summary["model_version"] == "1"
    assert summary["endpoint_url"] == f"http://127.0.0.1:{PORTS['serve']}/{MODEL}"
    answer = requests.post(summary["endpoint_url"], json=REQUEST, timeout=10).json()
    assert answer["predictions"] == [0, 1]

    # MLflow: the server on PostgreSQL holds the version and alias; artifacts went through it.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=topo.mlflow_url, registry_uri=topo.mlflow_url)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert any((topo.root / "shared" / "mlartifacts").rglob("saved_model.pb"))

    # Where things ran: Ray nodes, the training workers, the Serve replica.
    nodes = topo.ray_query(
        f"import json, ray; ray.init(address='127.0.0.1:{PORTS['ray_gcs']}', "
        "logging_level='ERROR'); "
        "print(json.dumps([{'id': n['NodeID'], 'res': n['Resources']} for n in ray.nodes() "
        "if n['Alive']]))")
    assert len(nodes) == 3
    large = {n["id"] for n in nodes if "large" in n["res"]}
    head = {n["id"] for n in nodes if "CPU" not in n["res"]}
    workers = _xcom(topo, run_id, "train")["worker_nodes"]
    assert len(workers) == 2 and not {w["node_id"] for w in workers} & head
    replicas = topo.ray_query(
        "import json, ray; from ray.util.state import list_actors; "
        f"ray.init(address='127.0.0.1:{PORTS['ray_gcs']}', logging_level='ERROR'); "
        # The address is explicit: the suite's own Ray may be running beside this cluster.
        "print(json.dumps([a.node_id for a in list_actors("
        f"address='127.0.0.1:{PORTS['ray_gcs']}', filters=[('state', '=', 'ALIVE')], "
        "limit=1000, raise_on_missing_output=False) "
        f"if a.class_name.startswith('ServeReplica:{MODEL}')]))")
    assert replicas and set(replicas) <= large

    # Spark: the prepare job ran as an application of the standalone master.
    apps = requests.get(f"http://127.0.0.1:{PORTS['spark_ui']}/json/", timeout=5).json()
    names = [a["name"] for a in apps.get("completedapps", []) + apps.get("activeapps", [])]
    assert any(n.startswith("slaflow-prepare-") for n in names), names

    # Airflow's metadata is in PostgreSQL.
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=topo.airflow_db) as conn:
        with conn.cursor() as cur:
            cur.execute("select count(*) from dag_run where dag_id = 'ml_lifecycle' and "
                        "run_id = %s", (run_id,))
            assert cur.fetchone()[0] == 1

    report = {"startup_seconds": topo.timings, "run_seconds": round(run_seconds, 1),
              "stage_seconds": summary.get("stage_seconds"),
              "training_seconds": summary["training_seconds"],
              "verify_p50_ms": summary["verify_p50_ms"], "verify_p99_ms": summary["verify_p99_ms"],
              "training_worker_nodes": workers, "serve_replica_nodes": replicas,
              "large_nodes": sorted(large), "head_nodes": sorted(head)}
    (topo.root / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


def test_new_training_data_retrains_against_the_champion_and_an_unanswered_review_promotes_nothing(
        topology: Topology) -> None:
    """Data-driven retraining on the real scheduler: a new CSV at SLAFLOW_TRAINING_DATA makes
    training_data_watch emit the Asset, the scheduler starts ml_lifecycle on it with the
    unattended contract, the gate compares with the champion of the test above, the review
    (policy 'always', 20 s) gets no answer and the version stays challenger, recorded."""
    import pandas as pd
    from sklearn.datasets import load_digits

    topo = topology
    env = topo.env()
    data = Path(env["SLAFLOW_TRAINING_DATA"])
    data.parent.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"px{i}" for i in range(64)])
    frame["label"] = digits.target
    frame.to_csv(data, index=False)
    Path(env["SLAFLOW_RETRAIN_CONTRACT"]).write_text(json.dumps(
        {**CONF, "review_policy": "always", "review_timeout_s": 20}))

    def watch() -> tuple[str, dict[str, str]]:
        code, run = topo.api("POST", "/dags/training_data_watch/dagRuns", {"logical_date": None})
        assert code == 200, run
        assert _wait_run(topo, run["dag_run_id"], dag_id="training_data_watch",
                         timeout_s=300) == "success"
        return run["dag_run_id"], task_states(topo, run["dag_run_id"], "training_data_watch")

    _, states = watch()
    assert states == {"check_training_data": "success"}
    deadline = time.monotonic() + 180
    while True:
        _, runs = topo.api("GET", "/dags/ml_lifecycle/dagRuns?run_type=asset_triggered")
        if runs["dag_runs"]:
            break
        assert time.monotonic() < deadline, "no asset-triggered ml_lifecycle run\n" + _tails(topo)
        time.sleep(3)
    run_id = runs["dag_runs"][0]["dag_run_id"]
    _, states = watch()  # same bytes again: no event, no second retrain
    assert states == {"check_training_data": "skipped"}

    state = _wait_run(topo, run_id)
    states = task_states(topo, run_id)
    assert state == "success", f"{states}\n{_tails(topo)}"
    plan = _xcom(topo, run_id, "plan")
    assert plan["contract"]["data_source"] == str(data)
    assert plan["contract"]["review_policy"] == "always"
    review = _xcom(topo, run_id, "review")
    assert review == {"approved": False, "responder": None, "timed_out": True}
    promotion = _xcom(topo, run_id, "promote")
    assert promotion["promoted"] is False and promotion["alias"] == "challenger"
    assert promotion["decision"]["champion_version"] == "1"
    assert promotion["decision"]["checks"][-1]["detail"] == "no answer within 20s: not promoted"
    _, runs = topo.api("GET", "/dags/ml_lifecycle/dagRuns?run_type=asset_triggered")
    assert len(runs["dag_runs"]) == 1

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=topo.mlflow_url, registry_uri=topo.mlflow_url)
    version = client.get_model_version(MODEL, promotion["model_version"])
    assert version.tags["slaflow.gate.decision"] == "not_promoted"
    assert "no answer within 20s" in version.tags["slaflow.gate.reasons"]
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == \
        promotion["model_version"]
    answer = requests.post(f"http://127.0.0.1:{PORTS['serve']}/{MODEL}", json=REQUEST,
                           timeout=10).json()
    assert answer["model_version"] == "1"
