"""One model version served on the real cluster, over real HTTP: a version application with
the fixed layout (no profile) behind its router, as ``ServeHook`` deploys every model."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import tier
from tests.reliability import tally

pytestmark = pytest.mark.integration

APP = "serve-test-model"


@pytest.fixture(scope="module")
def endpoint(trained: dict[str, Any], tracking_uri: str) -> Iterator[str]:
    from operators.hooks import ServeHook
    from policies import PriceTable, RunContract, fixed_plan, serving_layout, version_app

    hook = ServeHook()
    contract = RunContract.from_dict({"model_name": APP, "serving_replicas": 1})
    tiers = serving_layout(fixed_plan(contract), contract, PriceTable.default())
    hook.deploy_version(
        APP,
        tracking_uri,
        {
            "version": "7",
            "model_uri": trained["result"]["model_uri"],
            "tiers": [t.to_dict() for t in tiers],
        },
    )
    hook.wait_running(version_app(APP, "7"))
    hook.route(
        APP,
        {"primary": "7", "versions": {"7": {"routes": ["warm"]}}},
        signature=hook.version_signature(APP, "7", "warm"),
    )
    hook.wait_routing(APP, "7", None)
    yield hook.url(APP)
    hook.undeploy(APP)


@pytest.fixture(scope="module")
def test_rows(prepared: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from ray_jobs.data_io import read_xy

    return read_xy(prepared["paths"]["test"], prepared["feature_names"])


def test_info(endpoint: str, prepared: dict[str, Any]) -> None:
    info = requests.get(endpoint, timeout=10).json()
    assert info["model_version"] == "7" and info["routes"] == ["warm"]
    assert info["features"] == prepared["feature_names"]
    assert info["classes"] == prepared["classes"]


def test_predictions_match_the_model_in_process(
    endpoint: str,
    trained: dict[str, Any],
    prepared: dict[str, Any],
    test_rows: tuple[np.ndarray, np.ndarray],
) -> None:
    import mlflow
    import pandas as pd

    x, _ = test_rows
    resp = requests.post(endpoint, json={"instances": x[:50].tolist()}, timeout=10)
    assert resp.status_code == 200
    body = resp.json()
    local = mlflow.pyfunc.load_model(trained["result"]["model_uri"]).predict(
        pd.DataFrame(x[:50], columns=prepared["feature_names"])
    )
    assert body["predictions"] == local["prediction"].tolist()
    assert np.allclose(np.sum(body["probabilities"], axis=1), 1.0, atol=1e-4)


def test_the_endpoint_answers_at_its_path_without_a_redirect(
    endpoint: str, test_rows: tuple[np.ndarray, np.ndarray]
) -> None:
    """``POST /<model>`` as clients write it (curl follows no 307 with a POST)."""
    assert not endpoint.endswith("/")
    x, _ = test_rows
    resp = requests.post(
        endpoint, json={"instances": [x[0].tolist()]}, timeout=10, allow_redirects=False
    )
    assert resp.status_code == 200 and not resp.history, resp.status_code


def test_rows_by_feature_name(
    endpoint: str, prepared: dict[str, Any], test_rows: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = test_rows
    named = dict(zip(prepared["feature_names"], x[0].tolist(), strict=True))
    by_name = requests.post(endpoint, json={"instances": [named]}, timeout=10).json()
    by_list = requests.post(endpoint, json={"instances": [x[0].tolist()]}, timeout=10).json()
    assert by_name["predictions"] == by_list["predictions"]


def test_concurrent_requests_are_batched_and_all_answered(
    endpoint: str, test_rows: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = test_rows

    def one(i: int) -> int:
        return requests.post(endpoint, json={"instances": [x[i].tolist()]}, timeout=30).status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(one, range(64))) == {200}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"instances": [[1.0, 2.0]]}, 422, "instances[0]: List should have at least 64 items"),
        ({"instances": [["a"] * 64]}, 422, "instances[0][0] (px0_0): Input should be a valid"),
        ({"rows": []}, 422, "instances: Field required"),
        ({"instances": []}, 422, "at least 1 item"),
        ({"instances": [{"px0_0": 1.0}]}, 422, "instances[0].px0_1: Field required"),
        ({"instances": [[0.0] * 64] * 1025}, 413, "at most 1024"),
    ],
)
def test_bad_requests_get_4xx_with_the_fix(
    endpoint: str, body: Any, status: int, words: str
) -> None:
    resp = requests.post(endpoint, json=body, timeout=10)
    assert resp.status_code == status
    assert words in resp.json()["error"]
    assert '{"instances": [[0.0, 0.0, 0.0, ...]]}' in resp.json()["error"]


def test_invalid_json_and_wrong_method(endpoint: str) -> None:
    resp = requests.post(endpoint, data=b"{not json", timeout=10)
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]
    assert requests.put(endpoint, json={}, timeout=10).status_code == 405


def test_the_openapi_document_is_the_served_model_s_signature(
    endpoint: str, prepared: dict[str, Any]
) -> None:
    doc = requests.get(f"{endpoint}/openapi.json", timeout=10).json()
    schemas = doc["components"]["schemas"]
    n = len(prepared["feature_names"])
    assert list(schemas["Row"]["properties"]) == prepared["feature_names"]
    rows = schemas["PredictRequest"]["properties"]["instances"]
    as_list = next(s for s in rows["items"]["oneOf"] if s.get("type") == "array")
    assert as_list["minItems"] == as_list["maxItems"] == n
    assert requests.get(f"{endpoint}/docs", timeout=10).status_code == 200


def _fuzz(endpoint: str, op: Any, mode: Any, examples: int) -> list[tuple[int, str]]:
    """(status, error) of ``examples`` Schemathesis cases of ``op`` in ``mode``, each checked
    against the document: status code, content type and body conformance, no 5xx, and bodies
    the document refuses refused. Whether a body the document allows is accepted is checked
    by the caller: the one documented refusal of such a body is a 422 for rows whose answer
    overflows the model (values near float32's limit), which Schemathesis cannot know."""
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    seen: list[tuple[int, str]] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        resp = case.call_and_validate(
            base_url=endpoint, timeout=30, excluded_checks=[positive_data_acceptance]
        )
        error = resp.json().get("error", "") if resp.status_code != 200 else ""
        seen.append((resp.status_code, str(error)))
        tally(
            f"endpoint {op.method.upper()} {op.path} over HTTP (Schemathesis, {mode.value})",
            resp.status_code,
        )

    check()
    return seen


@pytest.mark.chaos
def test_fuzzing_the_openapi_document_gets_no_5xx(endpoint: str) -> None:
    """Schemathesis over the endpoint's own OpenAPI document, over real HTTP: bodies the
    document allows are answered (200, conforming to the response model) unless the model's
    answer overflows, bodies it refuses get a 4xx, and nothing gets a 5xx."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{endpoint}/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    post = next(op for op in ops if op.method.upper() == "POST")
    positive = _fuzz(endpoint, post, GenerationMode.POSITIVE, 40)
    negative = _fuzz(endpoint, post, GenerationMode.NEGATIVE, 60)
    gets = [
        s
        for op in ops
        if op is not post
        for s, _ in _fuzz(endpoint, op, GenerationMode.POSITIVE, 3)
    ]
    statuses = [s for s, _ in positive + negative] + gets
    assert statuses and all(s < 500 for s in statuses)
    refused = [(s, e) for s, e in positive if s != 200]
    assert all(s == 422 and "is not a finite number" in e for s, e in refused), refused
    # Schemathesis draws values up to float32's limit, where this model's answer overflows
    # (30 of 40 rows here): those get the documented 422; the rest are answered.
    assert len(positive) - len(refused) >= 5
    assert negative and all(400 <= s < 500 for s, _ in negative)
    assert gets and set(gets) == {200}


def test_footprint_counts_what_the_model_holds_and_undeploy_frees_it(
    endpoint: str, trained: dict[str, Any], tracking_uri: str
) -> None:
    """Serve's own view of the replicas: the router (0.05 CPU) and one 0.5-CPU warm replica;
    a second model taken off the endpoint leaves the footprint and answers 404."""
    from operators.hooks import ServeHook
    from policies import version_app

    hook = ServeHook()
    mine = hook.footprint().of_model(APP)
    assert mine.cpus == pytest.approx(0.55)
    assert "v7 warm 1x0.5" in mine.describe()
    other = "serve-test-other"
    hook.deploy_version(
        other,
        tracking_uri,
        {
            "version": "1",
            "model_uri": trained["result"]["model_uri"],
            "tiers": [tier(batch=1, ongoing=8, queued=8)],
        },
    )
    hook.wait_running(version_app(other, "1"))
    hook.route(other, {"primary": "1", "versions": {"1": {"routes": ["warm"]}}})
    hook.wait_routing(other, "1", None)
    assert hook.footprint().by_model()[other] == pytest.approx(0.3)
    assert sorted(hook.undeploy(other)) == [other, version_app(other, "1")]
    assert other not in hook.footprint().by_model()
    assert (
        requests.post(hook.url(other), json={"instances": [[0.0]]}, timeout=10).status_code == 404
    )
    assert hook.served_version(APP) == "7"  # the other model's undeploy left this one alone
