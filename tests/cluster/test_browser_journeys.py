"""One contract from the trigger form to a served model, on the production topology: the
three user journeys in a real browser (Playwright drives Debian's Chromium against the
Airflow UI and the MLflow UI: real api-server, scheduler, MLflow server, Ray and Spark
clusters), and then where everything of that same run ran.

1. Log in to Airflow, open ml_lifecycle's trigger form, submit a bad value: the form shows
   the validation message and no run starts. Submit a valid contract (review_policy always,
   replicas on the ``large`` node, static sizing so both training workers can be located).
2. The run stops at the review; approve it in the task's Required Actions tab; the run ends
   with the model promoted and served.
3. Open the model version in the MLflow UI: alias, description and gate tags are there.
4. The run on the topology: training workers off the head, the replica on the ``large`` node,
   the prepare job on the Spark master, artifacts through the MLflow server, Airflow's runs in
   PostgreSQL.

One DAG run serves all four (it used to be two runs of minutes each on 2 cores). The model
stays served for the retrain test (``test_cluster_lifecycle.py``), which takes it off.
Screenshots go to ``test-artifacts/browser/`` (``SLAFLOW_TEST_ARTIFACTS`` to move them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests

from tests.cluster.conftest import MODEL, tails, task_states, wait_parked, wait_run, xcom
from tests.cluster.topology import PORTS, Topology
from tests.conftest import ARTIFACTS

pytestmark = [pytest.mark.cluster, pytest.mark.browser]
CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
SHOTS = ARTIFACTS / "browser"
REQUEST = json.loads((REPO / "examples" / "digit_request.json").read_text())


@pytest.fixture()
def browser_page(topology: Topology) -> Any:
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: `make test` installs Debian's chromium (`make browser-deps`)"
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(
            viewport={"width": 1400, "height": 1100},
            # the MLflow UI asks for basic auth (Airflow's UI has its own login form)
            http_credentials={
                "username": topology.mlflow_user,
                "password": topology.mlflow_password,
            },
        )
        page.set_default_timeout(30_000)
        # expect() has its own 5 s default; on a loaded 2-core runner the run page's task table
        # was still loading after 5 s (CI, 2026-11-23), so assertions wait as long as actions do
        expect.set_options(timeout=30_000)
        try:
            yield page
        finally:
            browser.close()


def _shot(page: Any, name: str, locator: Any = None) -> None:
    (locator or page).screenshot(path=str(SHOTS / f"{name}.png"))


def _field(dialog: Any, name: str) -> Any:
    """A trigger-form field by its param name (the form names inputs ``element_<param>``)."""
    return dialog.locator(
        f"input[name=element_{name}], input#element_{name}, div#element_{name}"
    ).first


def _runs(topo: Topology) -> int:
    code, body = topo.api("GET", "/dags/ml_lifecycle/dagRuns?limit=1")
    assert code == 200, body
    return int(body["total_entries"])


def test_a_contract_from_the_trigger_form_through_review_to_serving_on_the_topology(
    topology: Topology, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    topo, page = topology, browser_page
    started = time.monotonic()
    password = json.loads(
        (topo.root / "airflow" / "simple_auth_manager_passwords.json.generated").read_text()
    )["admin"]

    # Journey 1: log in, open the form, a bad value, then a valid contract.
    page.goto(f"{topo.airflow_url}/dags/ml_lifecycle")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(password)
    _shot(page, "01_login")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/dags/ml_lifecycle")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    for section in (
        "Deadline and quality",
        "Budget",
        "Promotion review",
        "Model",
        "Serving",
        "Data",
    ):
        expect(dialog.get_by_role("button", name=section, exact=True)).to_be_visible()
    runs_before = _runs(topo)
    dialog.get_by_role("button", name="Deadline and quality", exact=True).click()
    _field(dialog, "deadline_s").fill("-1")
    trigger = dialog.get_by_role("button", name="Trigger", exact=True)
    expect(trigger).to_be_enabled()  # the defaults alone make a valid form
    trigger.click()
    message = dialog.get_by_text("Invalid input for param deadline_s")
    expect(message).to_be_visible()
    message.scroll_into_view_if_needed()
    _shot(page, "02_bad_value_message", dialog)
    assert _runs(topo) == runs_before, "a contract that fails validation started a run"

    _field(dialog, "deadline_s").fill("600")
    _field(dialog, "target_value").fill("0.85")
    dialog.get_by_role("button", name="Model", exact=True).click()
    _field(dialog, "model_name").fill(MODEL)
    _field(dialog, "max_epochs").fill("12")
    # static sizing holds max_workers (2) throughout, so the test can check that both
    # training workers landed on worker nodes; the deadline controller would pick 1
    dialog.get_by_role("button", name="Budget", exact=True).click()
    _field(dialog, "resize_policy").click()
    page.get_by_role("option", name="static", exact=True).click()
    # a serving contract a 2-core runner holds while it also hosts the whole topology (the
    # defaults, 100 ms at p99 for bursts of 60 req/s, want more headroom than that)
    dialog.get_by_role("button", name="Serving", exact=True).click()
    _field(dialog, "latency_slo_ms").fill("300")
    _field(dialog, "expected_rps").fill("5")
    _field(dialog, "peak_rps").fill("20")
    _field(dialog, "serving_node_resource").fill("large")
    dialog.get_by_role("button", name="Promotion review", exact=True).click()
    _field(dialog, "review_policy").click()
    page.get_by_role("option", name="always", exact=True).click()
    _shot(page, "03_valid_contract", dialog)
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    page.wait_for_url("**/dags/ml_lifecycle/runs/**")
    run_id = unquote(page.url.split("/runs/", 1)[1].split("?")[0].split("/")[0])
    assert _runs(topo) == runs_before + 1
    # the run page refreshes itself every few seconds (the API server and Chromium working on
    # the same 2 cores as the run): park the browser until there is something to look at
    page.goto("about:blank")

    # Journey 2: the run waits at the review; approve it where Airflow asks for it.
    deadline = time.monotonic() + 900
    while (states := task_states(topo, run_id)).get("review") != "awaiting_input":
        assert "failed" not in states.values(), f"{states}\n{tails(topo)}"
        assert time.monotonic() < deadline, f"review never asked: {states}"
        time.sleep(5)
    assert states["gate"] == "success" and states["promote"] in (None, "none")
    wait_parked(topo, run_id, "review")
    page.goto(f"{topo.airflow_url}/dags/ml_lifecycle/runs/{run_id}/tasks/review/required_actions")
    expect(page.get_by_text(f"Promote {MODEL} v1 to champion?")).to_be_visible()
    expect(page.get_by_text("review policy 'always'")).to_be_visible()
    _shot(page, "04_review_required_action")
    page.get_by_role("button", name="Approve", exact=True).click()
    expect(page.get_by_text("Response received")).to_be_visible()
    page.goto("about:blank")
    state = wait_run(topo, run_id, timeout_s=600)
    assert state == "success", f"{task_states(topo, run_id)}\n{tails(topo)}"
    page.goto(f"{topo.airflow_url}/dags/ml_lifecycle/runs/{run_id}")
    expect(page.get_by_text("12 Task Instances")).to_be_visible()
    _shot(page, "05_run_succeeded")
    served = requests.post(
        f"http://127.0.0.1:{topo.env()['SLAFLOW_SERVE_PORT']}/{MODEL}", json=REQUEST, timeout=10
    ).json()
    assert served["model_version"] == "1" and served["predictions"] == [0, 1]

    # Journey 3: the model version in the MLflow UI, as a reviewer sees it.
    page.goto(f"{topo.mlflow_url}/#/models/{MODEL}/versions/1")
    expect(page.get_by_text("@ champion").or_(page.get_by_text("champion").first)).to_be_visible(
        timeout=60_000
    )
    expect(page.get_by_text("slaflow.gate.decision")).to_be_visible()
    expect(page.get_by_text("PASS human_review: approved by admin").first).to_be_visible()
    expect(page.get_by_text("slaflow.airflow_run_url")).to_be_visible()
    _shot(page, "06_mlflow_model_version")
    page.screenshot(path=str(SHOTS / "06_mlflow_model_version_full.png"), full_page=True)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=topo.mlflow_url, registry_uri=topo.mlflow_url)
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == "1"
    report = json.loads(version.tags["slaflow.gate.report"])
    assert report["review"]["required"] is True
    assert report["review_answer"] == {"approved": True, "responder": "admin", "timed_out": False}
    assert version.tags["slaflow.airflow_run_url"].startswith(topo.airflow_url)

    # Journey 4: where that run ran on the topology.
    _where_it_ran(topo, run_id, client, time.monotonic() - started)


def _where_it_ran(topo: Topology, run_id: str, client: Any, run_seconds: float) -> None:
    summary = xcom(topo, run_id, "verify")
    assert summary["alias"] == "champion" and summary["model_version"] == "1"
    assert summary["endpoint_url"] == f"http://127.0.0.1:{PORTS['serve']}/{MODEL}"
    # MLflow: the server on PostgreSQL holds the version and alias; artifacts went through it
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert any((topo.root / "shared" / "mlartifacts").rglob("saved_model.pb"))
    # Ray nodes, the training workers, the Serve replicas
    nodes = topo.ray_query(
        f"import json, ray; ray.init(address='127.0.0.1:{PORTS['ray_gcs']}', "
        "logging_level='ERROR'); "
        "print(json.dumps([{'id': n['NodeID'], 'res': n['Resources']} for n in ray.nodes() "
        "if n['Alive']]))"
    )
    assert len(nodes) == 3
    large = {n["id"] for n in nodes if "large" in n["res"]}
    head = {n["id"] for n in nodes if "CPU" not in n["res"]}
    workers = xcom(topo, run_id, "train")["worker_nodes"]
    assert len(workers) == 2 and not {w["node_id"] for w in workers} & head
    replicas = topo.ray_query(
        "import json, ray; from ray.util.state import list_actors; "
        f"ray.init(address='127.0.0.1:{PORTS['ray_gcs']}', logging_level='ERROR'); "
        # The address is explicit: the suite's own Ray may be running beside this cluster.
        "print(json.dumps([a.node_id for a in list_actors("
        f"address='127.0.0.1:{PORTS['ray_gcs']}', filters=[('state', '=', 'ALIVE')], "
        "limit=1000, raise_on_missing_output=False) "
        f"if a.class_name.startswith('ServeReplica:{MODEL}')]))"
    )
    assert replicas and set(replicas) <= large  # the router and every tier of the version
    # Spark: the prepare job ran as an application of the standalone master
    apps = requests.get(f"http://127.0.0.1:{PORTS['spark_ui']}/json/", timeout=5).json()
    names = [a["name"] for a in apps.get("completedapps", []) + apps.get("activeapps", [])]
    assert any(n.startswith("slaflow-prepare-") for n in names), names
    # Airflow's metadata is in PostgreSQL
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=topo.airflow_db) as conn:
        with conn.cursor() as cur:
            cur.execute(
                "select count(*) from dag_run where dag_id = 'ml_lifecycle' and run_id = %s",
                (run_id,),
            )
            assert cur.fetchone()[0] == 1
    report = {
        "startup_seconds": topo.timings,
        "run_seconds": round(run_seconds, 1),
        "training_seconds": summary["training_seconds"],
        "verify_p50_ms": summary["verify_p50_ms"],
        "verify_p99_ms": summary["verify_p99_ms"],
        "training_worker_nodes": workers,
        "serve_replica_nodes": replicas,
        "large_nodes": sorted(large),
        "head_nodes": sorted(head),
    }
    (topo.root / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
