"""Property-based tests of the endpoint's request parsing (``ray_jobs.serve_app.parse_body``,
which the router runs on every POST): any body is either rows of finite float32 inputs of the
model's width or a ``BadRequest`` with a 4xx status and a message, never another exception
(which Serve turns into a 500)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_jobs.features import FeatureEncoder
from ray_jobs.serve_app import BadRequest, parse_body

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


def _check(body: bytes, encoder: Any, width: int) -> None:
    try:
        x = parse_body(body, tuple(encoder.input_columns), encoder)
    except BadRequest as err:
        assert 400 <= err.status < 500 and str(err)
        return
    assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == width and len(x) >= 1
    assert np.isfinite(x).all()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({"instances": _json}) | _json)
def test_any_json_body_is_rows_or_a_4xx(payload: Any) -> None:
    body = _body(payload)
    _check(body, NUMERIC, 3)
    _check(body, MIXED, 4)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_rows_or_a_4xx(body: bytes) -> None:
    _check(body, NUMERIC, 3)


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1e39, 0, 0]]}',
        b'{"instances": [[' + b"9" * 400 + b", 0, 0]]}",
        b'{"instances": [[' + b"9" * 5000 + b", 0, 0]]}",
        b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"instances": [[NaN, 0, 0]]}',
        b'{"instances": [[Infinity, 0, 0]]}',
        b'{"instances": [{"a": 1e39, "b": 0, "c": 0}]}',
    ],
)
def test_the_bodies_that_gave_500s_get_a_4xx(body: bytes) -> None:
    with pytest.raises(BadRequest) as err:
        parse_body(body, ("a", "b", "c"), NUMERIC)
    assert err.value.status == 400
