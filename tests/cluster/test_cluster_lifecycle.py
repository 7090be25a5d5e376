"""ml_lifecycle on the production topology, triggered through Airflow's REST API and by new
training data on the real scheduler. The first run of the topology (trigger form, review,
placement) is in ``test_browser_journeys.py``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.cluster.conftest import MODEL, task_states, undeploy
from tests.cluster.conftest import tails as _tails
from tests.cluster.conftest import wait_run as _wait_run
from tests.cluster.conftest import xcom as _xcom
from tests.cluster.topology import PORTS, Topology, restart_postgres
from tests.reliability import record, tally

pytestmark = pytest.mark.cluster
# The browser journey's model settings (the form's defaults), so this run finds the throughput
# calibration that run measured on the same cluster and data shape instead of measuring again.
CONF = {
    "model_name": MODEL,
    "max_epochs": 12,
    "target_accuracy": 0.85,
    "serving_node_resource": "large",
    "resize_policy": "static",
    # traffic and a latency SLO a loaded 2-core machine can plan for: with every
    # service of the topology on 2 cores, one replica's unloaded p99 measured 90-112 ms
    # (see SMALL in tests/e2e)
    "expected_rps": 5.0,
    "peak_rps": 20.0,
    "latency_slo_ms": 300.0,
}
REQUEST = json.loads(
    (Path(__file__).resolve().parents[2] / "examples" / "digit_request.json").read_text()
)


def test_rest_api_refuses_a_bad_contract_before_any_run(topology: Topology) -> None:
    code, body = topology.api(
        "POST", "/dags/ml_lifecycle/dagRuns", {"logical_date": None, "conf": {"deadline_s": -1}}
    )
    assert code == 400 and "deadline_s" in json.dumps(body)


@pytest.mark.chaos
@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_rest_triggers_are_refused_naming_the_field_never_a_500(
    topology: Topology, data: Any
) -> None:
    """Random contracts with at least one value the trigger form's schema refuses, sent to
    Airflow's REST API as a client would: each gets a 400 naming a field it got wrong, and no
    run starts. (A fully valid random contract would start a real run: not sent.)"""
    from tests.unit.test_contract_properties import JSON_VALUES, NAMES, schema_accepts

    conf = data.draw(st.dictionaries(st.sampled_from(NAMES), JSON_VALUES, min_size=1, max_size=4))
    bad = sorted(n for n, v in conf.items() if not schema_accepts(n, v))
    assume(bad)
    code, body = topology.api(
        "POST", "/dags/ml_lifecycle/dagRuns", {"logical_date": None, "conf": conf}
    )
    tally("Airflow REST trigger of ml_lifecycle (random contracts with a bad value)", code)
    assert code == 400, (conf, code, body)
    assert any(name in json.dumps(body) for name in bad), (conf, body)


@pytest.mark.chaos
def test_hostile_trigger_bodies_get_a_4xx(topology: Topology) -> None:
    """Not a contract at all: conf as a list, a string, nested 5,000 deep, a body that is
    not JSON. Each is a 4xx and no run starts."""
    before = topology.api("GET", "/dags/ml_lifecycle/dagRuns?limit=1")[1]["total_entries"]
    deep = b"[" * 5000 + b"0" + b"]" * 5000
    bodies = [
        *(
            json.dumps({"logical_date": None, "conf": conf}).encode()
            for conf in ([1, 2], "deadline_s=-1", {"deadline_s": 10**400})
        ),
        b'{"logical_date": null, "conf": {"deadline_s": ' + deep + b"}}",
        b"{not json",
        b"\xff\xfe",
    ]
    for raw in bodies:
        code, body = topology.api("POST", "/dags/ml_lifecycle/dagRuns", raw)
        tally("Airflow REST trigger of ml_lifecycle (bodies that are no contract)", code)
        assert 400 <= code < 500, (raw[:60], code, str(body)[:300])
    after = topology.api("GET", "/dags/ml_lifecycle/dagRuns?limit=1")[1]["total_entries"]
    assert after == before


def test_mlflow_refuses_anonymous_clients_and_serves_signed_in_ones(topology: Topology) -> None:
    """The topology's MLflow runs with basic auth (as compose does): the DAGs, the Ray jobs
    and these tests sign in; anyone else gets 401, to the REST API and to artifacts."""
    search = f"{topology.mlflow_url}/api/2.0/mlflow/registered-models/search"
    assert requests.get(search, timeout=30).status_code == 401
    artifacts = f"{topology.mlflow_url}/api/2.0/mlflow-artifacts/artifacts"
    assert requests.get(artifacts, timeout=30).status_code == 401
    wrong = requests.get(search, auth=(topology.mlflow_user, "not-the-password"), timeout=30)
    assert wrong.status_code == 401
    signed = requests.get(search, auth=(topology.mlflow_user, topology.mlflow_password), timeout=30)
    assert signed.status_code == 200, signed.text


@pytest.mark.chaos
def test_a_restarted_ray_head_leaves_nothing_served_until_reconcile_serves_the_champion(
    topology: Topology,
) -> None:
    """The Ray head SIGKILLed with everything it runs (GCS, dashboard, Serve's controller and
    proxy; no GCS fault tolerance in this topology): its supervisor starts it again, the
    workers, whose head went away, exit and join the new head, and every Serve application
    is gone. ``ml_reconcile``, triggered through the REST API, finds nothing answering and
    serves the champion again, recorded on the version. Needs the champion the browser
    journey makes (it runs first)."""
    from mlflow.tracking import MlflowClient

    topo = topology
    client = MlflowClient(tracking_uri=topo.mlflow_url, registry_uri=topo.mlflow_url)
    try:
        champion = str(client.get_model_version_by_alias(MODEL, "champion").version)
    except Exception:  # noqa: BLE001 - no such model or alias
        pytest.skip("no champion on the topology: the browser journey, which makes one, failed")
    url = f"http://127.0.0.1:{PORTS['serve']}/{MODEL}"
    assert requests.get(url, timeout=10).json()["model_version"] == champion

    t0 = time.monotonic()
    topo.kill("ray-head")
    deadline = time.monotonic() + 300
    while "ray-head" not in topo.restarts or topo.ray_nodes_alive() < 3:
        assert time.monotonic() < deadline, f"Ray is not back: {topo.restarts}\n{_tails(topo)}"
        time.sleep(2)
    back_s = time.monotonic() - t0
    try:  # the new head runs no Serve until a driver starts it: nothing answers
        assert requests.post(url, json=REQUEST, timeout=10).status_code != 200
    except requests.ConnectionError:
        pass

    code, run = topo.api(
        "POST", "/dags/ml_reconcile/dagRuns", {"logical_date": None, "conf": {"model_name": MODEL}}
    )
    assert code == 200, run
    state = _wait_run(topo, run["dag_run_id"], dag_id="ml_reconcile", timeout_s=600)
    assert state == "success", f"{task_states(topo, run['dag_run_id'], 'ml_reconcile')}"
    answer = requests.post(url, json=REQUEST, timeout=30)
    unserved_s = time.monotonic() - t0
    record(
        "the Ray head SIGKILLed (GCS, Serve's controller and proxy with it), started again by "
        "its supervisor, then ml_reconcile",
        ray_back_s=round(back_s, 1),
        unserved_s=round(unserved_s, 1),
        restarts=dict(topo.restarts),
        champion_equals_served=answer.ok and answer.json()["model_version"] == champion,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == champion
    done = json.loads(client.get_model_version(MODEL, champion).tags["slaflow.reconciled"])
    assert "nothing answers at the endpoint" in done["reason"], done
    assert done["by"].startswith("ml_reconcile/")


@pytest.mark.chaos
def test_new_training_data_retrains_against_the_champion_and_an_unanswered_review_promotes_nothing(
    topology: Topology,
) -> None:
    """Data-driven retraining on the real scheduler: a new CSV at SLAFLOW_TRAINING_DATA makes
    training_data_watch emit the Asset, the scheduler starts ml_lifecycle on it with the
    unattended contract, the gate compares with the champion (the browser test's, when it ran
    first), the review (policy 'always', 20 s) gets no answer and the version stays
    challenger, recorded; what served before still serves.

    PostgreSQL, which holds Airflow's metadata and MLflow's store, is restarted while the run
    trains: every service's connections are cut. The run must still end as it would have,
    with one new version (nothing registered twice) and one asset-triggered run."""
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from sklearn.datasets import load_digits

    topo = topology
    env = topo.env()
    client = MlflowClient(tracking_uri=topo.mlflow_url, registry_uri=topo.mlflow_url)

    def champion() -> str | None:
        try:
            return str(client.get_model_version_by_alias(MODEL, "champion").version)
        except Exception:  # noqa: BLE001 - no such model or alias yet
            return None

    def versions() -> int:
        try:
            return len(client.search_model_versions(f"name = '{MODEL}'"))
        except Exception:  # noqa: BLE001 - no such model yet
            return 0

    before = champion()
    versions_before = versions()
    url = f"http://127.0.0.1:{PORTS['serve']}/{MODEL}"
    try:
        served_before = requests.get(url, timeout=10)
        served = served_before.json()["model_version"] if served_before.ok else None
    except requests.ConnectionError:  # nothing served yet: Serve's proxy never started
        served = None
    data = Path(env["SLAFLOW_TRAINING_DATA"])
    data.parent.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"px{i}" for i in range(64)])
    frame["label"] = digits.target
    frame.to_csv(data, index=False)
    Path(env["SLAFLOW_RETRAIN_CONTRACT"]).write_text(
        json.dumps(
            # A CSV's whole-number labels could be classes or a quantity: the contract says.
            {**CONF, "task": "classification", "review_policy": "always", "review_timeout_s": 20}
        )
    )

    def watch() -> tuple[str, dict[str, str]]:
        code, run = topo.api("POST", "/dags/training_data_watch/dagRuns", {"logical_date": None})
        assert code == 200, run
        assert (
            _wait_run(topo, run["dag_run_id"], dag_id="training_data_watch", timeout_s=300)
            == "success"
        )
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

    deadline = time.monotonic() + 600
    while task_states(topo, run_id).get("train") != "running":  # the fault, mid-training
        _, run = topo.api("GET", f"/dags/ml_lifecycle/dagRuns/{run_id}")
        assert run["state"] == "running", f"ended before training: {task_states(topo, run_id)}"
        assert time.monotonic() < deadline, f"train never ran\n{_tails(topo)}"
        time.sleep(1)
    time.sleep(5)  # the Ray job submitted and logging to MLflow
    restarted_before = dict(topo.restarts)
    down_s = restart_postgres()

    state = _wait_run(topo, run_id)
    states = task_states(topo, run_id)
    _, tis = topo.api("GET", f"/dags/ml_lifecycle/dagRuns/{run_id}/taskInstances")
    tries = {t["task_id"]: t["try_number"] for t in tis["task_instances"]}
    record(
        "PostgreSQL (Airflow's metadata, MLflow's store) restarted during ml_lifecycle's train "
        "task, on the scheduler",
        postgres_away_s=round(down_s, 1),
        run_state=state,
        tasks_retried=sorted(t for t, n in tries.items() if n > 1),
        services_restarted={
            name: n - restarted_before.get(name, 0)
            for name, n in topo.restarts.items()
            if n > restarted_before.get(name, 0)
        },
        versions_registered=versions() - versions_before,
        duplicated_versions=max(0, versions() - versions_before - 1),
    )
    assert state == "success", f"{states} tries {tries}\n{_tails(topo)}"
    assert versions() == versions_before + 1  # retried or not, registered once
    plan = _xcom(topo, run_id, "plan")
    assert plan["contract"]["data_source"] == str(data)
    assert plan["contract"]["review_policy"] == "always"
    review = _xcom(topo, run_id, "review")
    assert review == {"approved": False, "responder": None, "timed_out": True}
    promotion = _xcom(topo, run_id, "promote")
    assert promotion["promoted"] is False and promotion["alias"] == "challenger"
    assert promotion["decision"]["champion_version"] == before
    assert promotion["decision"]["checks"][-1]["detail"] == "no answer within 20s: not promoted"
    _, runs = topo.api("GET", "/dags/ml_lifecycle/dagRuns?run_type=asset_triggered")
    assert len(runs["dag_runs"]) == 1

    version = client.get_model_version(MODEL, promotion["model_version"])
    assert version.tags["slaflow.gate.decision"] == "not_promoted"
    assert "no answer within 20s" in version.tags["slaflow.gate.reasons"]
    assert champion() == before
    assert (
        str(client.get_model_version_by_alias(MODEL, "challenger").version)
        == promotion["model_version"]
    )
    if served is not None:  # serving is untouched by an unpromoted version
        answer = requests.post(url, json=REQUEST, timeout=10).json()
        assert answer["model_version"] == served
        undeploy(topo, MODEL)
