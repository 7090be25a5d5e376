"""Property-based tests of the endpoint's HTTP contract (``ray_jobs.serve_api.build_api``,
the FastAPI app every model's router serves), in-process over ASGI: any body is either rows of
finite float32 inputs of the model's width, handed to the backend, or a 4xx with an ``error``
that says what to fix, never another exception (which would be a 500). The same app is fuzzed
over HTTP against the real endpoint by Schemathesis (``tests/integration/test_serve_app.py``)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from ray_jobs.features import FeatureEncoder
from ray_jobs.serve_api import MAX_BODY_BYTES, build_api, signature_of
from tests.reliability import tally

pytestmark = pytest.mark.quick

NUMERIC = FeatureEncoder.numeric(("a", "b", "c"))
MIXED = FeatureEncoder.of_profile(
    {
        "feature_names": ["n", "color=red", "color=blue", "color=__oov__"],
        "encoding": {
            "columns": [
                {"name": "n", "kind": "numeric"},
                {"name": "color", "kind": "categorical", "vocab": ["red", "blue"]},
            ]
        },
    }
)


class _Checking:
    """A backend that checks what reaches the model: finite float32 rows of its width."""

    def __init__(self, encoder: FeatureEncoder, features: list[str]) -> None:
        self._encoder = encoder
        self.info = {
            "model_name": "m",
            "model_version": "1",
            "features": features,
            "classes": [0, 1],
            "task": "classification",
            "encoding": None if encoder.all_numeric else encoder.to_dict(),
        }
        self.seen = 0

    async def describe(self) -> dict[str, Any]:
        return self.info

    async def encoder(self) -> FeatureEncoder:
        return self._encoder

    async def predict(self, x: np.ndarray, caller: str, client: str) -> Any:
        assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == self._encoder.width
        assert len(x) >= 1 and np.isfinite(x).all() and caller
        self.seen += 1
        proba = np.tile([[0.25, 0.75]], (len(x), 1)).tolist()
        body = {
            "predictions": [1] * len(x),
            "probabilities": proba,
            "model_name": "m",
            "model_version": "1",
            "route": "warm",
        }
        return 200, body, {}

    def stats(self) -> dict[str, Any]:
        return {}


def _client(encoder: FeatureEncoder, features: list[str]) -> tuple[TestClient, _Checking]:
    backend = _Checking(encoder, features)
    app = build_api(backend, "m", signature_of(backend.info))
    return TestClient(app), backend


CLIENTS = {
    "numeric": _client(NUMERIC, ["a", "b", "c"]),
    "mixed": _client(MIXED, ["n", "color=red", "color=blue", "color=__oov__"]),
}
# a router deployed without a signature (ServeHook.route with none): rows of any width
_generic = _Checking(NUMERIC, ["a", "b", "c"])
CLIENTS["generic"] = (TestClient(build_api(_generic, "m", None)), _generic)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from([1e39, -1e39, 1e308, "1e39", "NaN", "Infinity", "red"])
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(["instances", "a", "b", "c", "n", "color", "x"]), inner, max_size=5
        )
    ),
    max_leaves=20,
)


def _body(payload: Any) -> bytes:
    try:
        return json.dumps(payload).encode()
    except ValueError:  # a 5,000-digit integer: Python refuses to print it
        return b'{"instances": [[' + b"9" * 5000 + b", 1, 2]]}"


def _check(body: bytes, which: str, content_type: str = "application/json") -> int:
    client, _ = CLIENTS[which]
    resp = client.post("/", content=body, headers={"content-type": content_type})
    tally("endpoint app in-process (Hypothesis bodies)", resp.status_code)
    if resp.status_code != 200:
        assert 400 <= resp.status_code < 500, resp.text
        assert resp.json()["error"]
    return resp.status_code


@pytest.mark.chaos
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({"instances": _json}) | _json)
def test_any_json_body_is_rows_or_a_4xx(payload: Any) -> None:
    body = _body(payload)
    _check(body, "numeric")
    _check(body, "mixed")
    _check(body, "generic")


@pytest.mark.chaos
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["application/json", "text/plain", ""]))
def test_any_bytes_are_rows_or_a_4xx(body: bytes, content_type: str) -> None:
    _check(body, "numeric", content_type)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b'{"instances": [[1e39, 0, 0]]}', 422, "instances[0][0] (a): Input should be less"),
        (b'{"instances": [[' + b"9" * 400 + b", 0, 0]]}", 422, "instances[0][0] (a)"),
        (b'{"instances": [[' + b"9" * 5000 + b", 0, 0]]}", 400, "number JSON cannot carry"),
        (b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nests"),
        (b'{"instances": [[NaN, 0, 0]]}', 422, "finite number"),
        (b'{"instances": [[Infinity, 0, 0]]}', 422, "instances[0][0] (a)"),
        (b'{"instances": [{"a": 1e39, "b": 0, "c": 0}]}', 422, "instances[0].a"),
        (b'{"instances": [[1, 2]]}', 422, "at least 3 items"),
        (b'{"instances": [{"a": 1, "b": 2}]}', 422, "instances[0].c: Field required"),
        (b'{"instances": [7]}', 422, "a row is a list of the model's columns"),
        (b'{"rows": []}', 422, "instances: Field required"),
        (b'{"instances": []}', 422, "at least 1 item"),
        (b"{not json", 400, "not valid JSON"),
        (b'{"instances": [["\xff"]]}', 400, "not UTF-8"),
    ],
)
@pytest.mark.chaos
def test_bad_bodies_get_a_4xx_naming_the_place(body: bytes, status: int, words: str) -> None:
    client, backend = CLIENTS["numeric"]
    seen = backend.seen
    resp = client.post("/", content=body, headers={"content-type": "application/json"})
    tally("endpoint app in-process (the issue's hostile bodies)", resp.status_code)
    assert resp.status_code == status, resp.text
    assert words in resp.json()["error"]
    assert backend.seen == seen  # nothing reached the model


@pytest.mark.parametrize(
    "rows",
    [[[1.0, 2.0]], [[1.0, 2.0, 3.0], [1.0]], [{"a": 1, "b": 2}], [[1.0, 2.0, 3.0, 4.0]]],
)
def test_without_a_signature_rows_of_another_width_get_a_422(rows: Any) -> None:
    client, backend = CLIENTS["generic"]
    seen = backend.seen
    resp = client.post("/", json={"instances": rows})
    assert resp.status_code == 422 and "instances[" in resp.json()["error"]
    assert backend.seen == seen
    assert client.post("/", json={"instances": [[1, 2, 3]]}).status_code == 200


def test_too_many_rows_or_bytes_get_413_before_the_model() -> None:
    client, backend = CLIENTS["numeric"]
    resp = client.post("/", json={"instances": [[0.0, 0.0, 0.0]] * 1025})
    assert resp.status_code == 413 and "at most 1024" in resp.json()["error"]
    big = b'{"instances": [[' + b"0," * (MAX_BODY_BYTES // 2) + b"0]]}"
    resp = client.post("/", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "split the request" in resp.json()["error"]
    # a streamed body (no Content-Length) is cut off at the limit, not read whole
    chunks = iter([b'{"instances": [['] + [b"0," * 65536] * 64)
    resp = client.post("/", content=chunks, headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "over" in resp.json()["error"]


def test_rows_by_name_and_text_categories_reach_the_model_encoded() -> None:
    client, backend = CLIENTS["mixed"]
    seen = backend.seen
    rows = [{"n": 1.5, "color": "red"}, [2, "green"], {"n": 0, "color": None, "extra": 1}]
    assert client.post("/", json={"instances": rows}).status_code == 200
    assert backend.seen == seen + 1
    resp = client.post("/", json={"instances": [{"n": "1.5", "color": "red"}]})
    assert resp.status_code == 422 and "instances[0].n" in resp.json()["error"]


def test_the_openapi_document_is_the_model_s_contract() -> None:
    client, _ = CLIENTS["mixed"]
    doc = client.get("/openapi.json").json()
    post = doc["paths"]["/"]["post"]
    assert {"200", "400", "413", "422", "429", "503", "504"} <= set(post["responses"])
    schemas = doc["components"]["schemas"]
    row = schemas["Row"]
    assert set(row["properties"]) == {"n", "color"} and row["required"] == ["n", "color"]
    assert row["properties"]["n"]["type"] == "number"
    assert schemas["PredictRequest"]["properties"]["instances"]["maxItems"] == 1024
    assert "x-slaflow-caller" in json.dumps(post["parameters"])
    assert client.get("/docs").status_code == 200


def test_the_model_s_path_without_a_trailing_slash_is_answered_not_redirected() -> None:
    _, backend = CLIENTS["numeric"]
    client = TestClient(build_api(backend, "m", signature_of(backend.info)), root_path="/m")
    for path in ("/m", "/m/"):
        resp = client.post(path, json={"instances": [[1, 2, 3]]}, follow_redirects=False)
        assert resp.status_code == 200, (path, resp.status_code)
    assert client.get("/m", follow_redirects=False).json()["model_version"] == "1"
    assert client.get("/m/-/stats", follow_redirects=False).status_code == 200


def test_a_body_without_content_type_is_json_and_a_form_body_is_told_to_be_json() -> None:
    client, _ = CLIENTS["numeric"]
    resp = client.post("/", content=b'{"instances": [[1, 2, 3]]}')
    assert resp.status_code == 200, resp.text
    form = {"content-type": "application/x-www-form-urlencoded"}  # curl -d without -H
    resp = client.post("/", content=b'{"instances": [[1, 2, 3]]}', headers=form)
    assert resp.status_code == 415 and "Content-Type: application/json" in resp.json()["error"]
