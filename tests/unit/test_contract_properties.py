"""Property-based tests of the run contract (Hypothesis): whatever a person or a REST client
sends, the contract is built or refused with a ``ContractError`` naming a field, never another
exception; and each field's JSON schema (the Airflow trigger form's check) and the Python check
accept and refuse the same values.

The cross-field rules (fractions that leave no training rows, peak below expected traffic, a
metric of the other task, ...) are Python's alone: Airflow Params validate one field at a
time, so the form cannot express them; they still end in a ``ContractError`` naming a field.
"""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import FIELDS, ContractError, RunContract, contract_json_schema
from policies._contract import _or_default, _validate
from tests.reliability import tally

pytestmark = pytest.mark.quick

NAMES = [f.name for f in FIELDS]
KNOWN = set(NAMES) | {"contract_version", "target_accuracy", "<contract>"}
SCHEMA = contract_json_schema()


def _nested(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Scalars, and lists and objects of them, a few levels deep."""
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )


_TEXT = ["", " ", "\t", "mlp\n", "1e39", "xgboost", "accuracy", "local[*]", "spark://h:7077"]
#: JSON values only (what the form and the REST API can carry).
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(_TEXT)
)
JSON_VALUES = _nested(_json_scalars)
#: And Python objects beyond JSON (NaN, infinity, 10**400).
_values = _nested(
    _json_scalars
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
)


def _outcome(name: str, value: Any) -> bool:
    """Whether Python accepts ``value`` for the field ``name`` (alone)."""
    spec = next(f for f in FIELDS if f.name == name)
    try:
        _validate(spec, _or_default(spec, value))
    except ContractError as err:
        assert err.field == name and err.fix
        return False
    return True


def schema_accepts(name: str, value: Any) -> bool:
    return jsonschema.Draft202012Validator(SCHEMA["properties"][name]).is_valid(value)


@pytest.mark.chaos
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=12), _values, max_size=6))
def test_any_contract_is_built_or_refused_naming_a_field(raw: dict[str, Any]) -> None:
    try:
        contract = RunContract.from_dict(raw)
    except ContractError as err:
        assert err.field in KNOWN or err.field in raw, err.field
        assert err.fix and str(err).startswith(f"contract field '{err.field}':")
        tally("RunContract.from_dict (random contracts)", "refused naming the field")
        return
    except Exception as exc:  # the crash this test exists to catch; counted, then raised
        tally("RunContract.from_dict (random contracts)", f"crashed: {type(exc).__name__}")
        raise
    tally("RunContract.from_dict (random contracts)", "accepted")
    # What is accepted round-trips and is finite: no NaN or 10**400 gets into a plan.
    again = RunContract.from_dict(contract.to_dict())
    assert again == contract
    for f in FIELDS:
        v = getattr(contract, f.name)
        if isinstance(v, float):
            assert math.isfinite(v)
    json.dumps(contract.to_dict(), allow_nan=False)


@pytest.mark.chaos
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), data=st.data())
def test_form_schema_and_python_agree_on_any_json_value(name: str, data: Any) -> None:
    value = data.draw(JSON_VALUES, label="value")
    agree = schema_accepts(name, value) == _outcome(name, value)
    tally("trigger form schema vs Python check (random values)", "agree" if agree else "disagree")
    assert agree, (name, value)


def _valid(spec: Any) -> st.SearchStrategy[Any]:
    """Values the field's schema accepts, drawn from the schema's own terms (bounds, enum,
    pattern searched as JSON Schema searches it, item rules)."""
    if spec.enum is not None:
        return st.sampled_from(list(spec.enum))
    if spec.type in ("number", "integer"):
        lo = spec.minimum if spec.minimum is not None else spec.exclusive_minimum
        hi = spec.maximum if spec.maximum is not None else spec.exclusive_maximum
        if spec.type == "integer":
            return st.integers(
                min_value=None if lo is None else math.ceil(lo),
                max_value=None if hi is None else math.floor(hi),
            ).filter(lambda v: schema_accepts(spec.name, v))
        return st.floats(
            min_value=lo,
            max_value=hi,
            exclude_min=spec.exclusive_minimum is not None,
            exclude_max=spec.exclusive_maximum is not None,
            allow_nan=False,
        )
    if spec.type == "string":
        text = st.from_regex(spec.schema_pattern, fullmatch=False)
        return (st.none() | text) if spec.optional else text
    if spec.type == "array":
        item = spec.items or {}
        if item.get("type") == "string":
            entry: st.SearchStrategy[Any] = st.text(min_size=1, max_size=20)
        else:
            entry = st.integers(item.get("minimum"), item.get("maximum"))
        return st.lists(entry, min_size=spec.min_items or 0, max_size=min(spec.max_items or 8, 8))
    return st.dictionaries(st.text(max_size=8), _json_scalars, max_size=4)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), data=st.data())
def test_every_value_the_schema_accepts_python_accepts(name: str, data: Any) -> None:
    spec = next(f for f in FIELDS if f.name == name)
    value = data.draw(_valid(spec), label="value")
    assert schema_accepts(name, value), (name, value)  # the generator keeps to the schema
    assert _outcome(name, value), (name, value)


@pytest.mark.parametrize(
    "raw",
    [
        {"deadline_s": 10**400},
        {"target_value": 10**5000},
        {"max_workers": -(10**400)},
        {"hidden_units": [10**5000]},
        {"model_params": {"a": 10**5000}},
        {"deadline_s": 1e39},
        {"deadline_s": float("inf")},
        {"model": "mlp\n"},
        {"label_column": " \t"},
        {"feature_columns": [[[]]]},
    ],
)
def test_values_found_by_fuzzing_are_refused_naming_the_field(raw: dict[str, Any]) -> None:
    with pytest.raises(ContractError) as err:
        RunContract.from_dict(raw)
    assert err.value.field == next(iter(raw)) and len(str(err.value)) < 600


def test_a_list_nested_5000_deep_is_refused_not_a_crash() -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    for raw in ({"model_params": {"a": deep}}, {"hidden_units": deep}, {"label_column": deep}):
        with pytest.raises(ContractError) as err:
            RunContract.from_dict(raw)
        assert err.value.field == next(iter(raw))


def test_whole_floats_are_whole_numbers_in_lists_too() -> None:
    assert RunContract.from_dict({"hidden_units": [32.0, 16]}).hidden_units == (32, 16)
