"""The trigger form: Airflow ``Param``s generated from the run contract's JSON schema."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from policies import contract_json_schema


def contract_params() -> dict[str, Param]:
    """One ``Param`` per contract field, with its bounds, enum, title, description, section.

    Airflow validates ``dag_run.conf`` against these before any task runs (HTTP 400 over REST,
    a message in the UI form), so a bad value never starts a run.
    """
    params: dict[str, Param] = {}
    for name, schema in contract_json_schema()["properties"].items():
        if name == "contract_version":
            continue
        schema = dict(schema)
        default: Any = schema.pop("default")
        if isinstance(schema["type"], list) and "null" in schema["type"] and default == "":
            default = None  # optional text: an empty form field, not a required one
        params[name] = Param(default, **schema)
    return params


def model_name_param(description: str) -> Param:
    """The form field naming a registered model, with the contract's own rule for names (no
    default: a model that does not exist is no useful default)."""
    from policies import FIELDS_BY_NAME

    spec = FIELDS_BY_NAME["model_name"]
    return Param(
        type="string",
        pattern=spec.schema_pattern,
        title="Model name",
        description=f"{description} {spec.fix[0].upper()}{spec.fix[1:]}.",
    )
