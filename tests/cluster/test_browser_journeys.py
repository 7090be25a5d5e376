"""The three user journeys in a real browser: Playwright drives Debian's Chromium against the
Airflow UI and the MLflow UI of the production topology (real api-server, scheduler, MLflow
server, Ray and Spark clusters).

1. Log in to Airflow, open ml_lifecycle's trigger form, submit a bad value: the form shows
   the validation message and no run starts. Submit a valid contract (review_policy always).
2. The run stops at the review; approve it in the task's Required Actions tab; the run ends
   with the model promoted and served.
3. Open the model version in the MLflow UI: alias, description and gate tags are there.

Screenshots go to ``test-artifacts/browser/`` (``SLAFLOW_TEST_ARTIFACTS`` to move them).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests

from tests.cluster.conftest import tails, task_states, undeploy, wait_run
from tests.cluster.topology import Topology

pytestmark = [pytest.mark.cluster, pytest.mark.browser]
CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("SLAFLOW_TEST_ARTIFACTS", REPO / "test-artifacts")) / "browser"
MODEL = "browser-digits"
REQUEST = json.loads((REPO / "examples" / "digit_request.json").read_text())


@pytest.fixture()
def browser_page() -> Any:
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: `make test` installs Debian's chromium (`make browser-deps`)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
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
    return dialog.locator(f"input[name=element_{name}], input#element_{name}, "
                          f"div#element_{name}").first


def _runs(topo: Topology) -> int:
    code, body = topo.api("GET", "/dags/ml_lifecycle/dagRuns?limit=1")
    assert code == 200, body
    return int(body["total_entries"])


def test_trigger_form_review_and_registry_in_a_real_browser(
        topology: Topology, browser_page: Any, request: pytest.FixtureRequest) -> None:
    from playwright.sync_api import expect

    topo, page = topology, browser_page
    # the cluster tests after this one train on the same 4 CPUs: free what this one serves
    request.addfinalizer(lambda: undeploy(topo, MODEL))
    password = json.loads((topo.root / "airflow" /
                           "simple_auth_manager_passwords.json.generated").read_text())["admin"]

    # Journey 1: log in, open the form, a bad value, then a valid contract.
    page.goto(f"{topo.airflow_url}/dags/ml_lifecycle")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(password)
    _shot(page, "01_login")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/dags/ml_lifecycle")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    for section in ("Deadline and quality", "Budget", "Promotion review", "Model", "Serving",
                    "Data"):
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
    _field(dialog, "target_accuracy").fill("0.85")
    dialog.get_by_role("button", name="Model", exact=True).click()
    _field(dialog, "model_name").fill(MODEL)
    _field(dialog, "max_epochs").fill("12")
    # a serving contract a 2-core runner holds while it also hosts the whole topology (the
    # defaults, 100 ms at p99 for bursts of 60 req/s, want more headroom than that)
    dialog.get_by_role("button", name="Serving", exact=True).click()
    _field(dialog, "latency_slo_ms").fill("300")
    _field(dialog, "expected_rps").fill("5")
    _field(dialog, "peak_rps").fill("20")
    dialog.get_by_role("button", name="Promotion review", exact=True).click()
    _field(dialog, "review_policy").click()
    page.get_by_role("option", name="always", exact=True).click()
    _shot(page, "03_valid_contract", dialog)
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    page.wait_for_url("**/dags/ml_lifecycle/runs/**")
    run_id = unquote(page.url.split("/runs/", 1)[1].split("?")[0].split("/")[0])
    assert _runs(topo) == runs_before + 1

    # Journey 2: the run waits at the review; approve it where Airflow asks for it.
    deadline = time.monotonic() + 900
    while (states := task_states(topo, run_id)).get("review") != "awaiting_input":
        assert "failed" not in states.values(), f"{states}\n{tails(topo)}"
        assert time.monotonic() < deadline, f"review never asked: {states}"
        time.sleep(5)
    assert states["gate"] == "success" and states["promote"] in (None, "none")
    page.goto(f"{topo.airflow_url}/dags/ml_lifecycle/runs/{run_id}/tasks/review/"
              "required_actions")
    expect(page.get_by_text(f"Promote {MODEL} v1 to champion?")).to_be_visible()
    expect(page.get_by_text("review policy 'always'")).to_be_visible()
    _shot(page, "04_review_required_action")
    page.get_by_role("button", name="Approve", exact=True).click()
    expect(page.get_by_text("Response received")).to_be_visible()
    state = wait_run(topo, run_id, timeout_s=600)
    assert state == "success", f"{task_states(topo, run_id)}\n{tails(topo)}"
    page.goto(f"{topo.airflow_url}/dags/ml_lifecycle/runs/{run_id}")
    expect(page.get_by_text("12 Task Instances")).to_be_visible()
    _shot(page, "05_run_succeeded")
    served = requests.post(f"http://127.0.0.1:{topo.env()['SLAFLOW_SERVE_PORT']}/{MODEL}",
                           json=REQUEST, timeout=10).json()
    assert served["model_version"] == "1" and served["predictions"] == [0, 1]

    # Journey 3: the model version in the MLflow UI, as a reviewer sees it.
    page.goto(f"{topo.mlflow_url}/#/models/{MODEL}/versions/1")
    expect(page.get_by_text("@ champion").or_(page.get_by_text("champion").first)).to_be_visible(
        timeout=60_000)
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
    assert report["review_answer"] == {"approved": True, "responder": "admin",
                                       "timed_out": False}
    assert version.tags["slaflow.airflow_run_url"].startswith(topo.airflow_url)
