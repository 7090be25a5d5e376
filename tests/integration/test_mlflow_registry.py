"""Registry conventions on a real MLflow store (SQLite): idempotent versions and aliases."""

from __future__ import annotations

from typing import Any

import pytest

from mlflow_config import registry as reg
from policies import ChampionRecord, decide_promotion

pytestmark = [pytest.mark.integration, pytest.mark.quick]


def _new_run(client: Any, key: str) -> str:
    exp = reg.get_or_create_experiment(client, "slaflow/registry-tests", None)
    run_id, created = reg.find_or_create_run(client, exp, key, key, {})
    assert created
    return run_id


def test_run_lookup_is_idempotent(tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = reg.get_or_create_experiment(client, "slaflow/registry-tests", None)
    first = reg.find_or_create_run(client, exp, "k-1", "r", {})
    assert reg.find_or_create_run(client, exp, "k-1", "r", {}) == (first[0], False)


def test_versions_and_aliases_follow_the_gate(trained: dict[str, Any], tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    name, uri = "registry-test-model", trained["result"]["model_uri"]
    run_a = _new_run(client, "reg-a")
    v1, created = reg.register_version(
        client, name, uri, run_a, {reg.TAG_TEST_ACCURACY: "0.91"}, "first"
    )
    assert created
    again, created_again = reg.register_version(client, name, uri, run_a, {}, "retry")
    assert (again.version, created_again) == (v1.version, False)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    assert reg.get_champion(client, name) is None
    reg.apply_promotion(client, name, v1.version, decide_promotion(0.91, 0.9, 0.0, None))
    assert reg.get_champion(client, name) == ChampionRecord(str(v1.version), 0.91)

    run_b = _new_run(client, "reg-b")
    v2, _ = reg.register_version(client, name, uri, run_b, {reg.TAG_TEST_ACCURACY: "0.93"}, "b")
    decision = decide_promotion(0.93, 0.9, 0.01, reg.get_champion(client, name))
    moved = reg.apply_promotion(client, name, v2.version, decision)
    assert moved == {"previous_champion": str(v1.version), "champion": str(v2.version)}
    reg.apply_promotion(client, name, v2.version, decision)  # a retry changes nothing
    assert client.get_model_version_by_alias(name, "previous_champion").version == v1.version

    run_c = _new_run(client, "reg-c")
    v3, _ = reg.register_version(client, name, uri, run_c, {reg.TAG_TEST_ACCURACY: "0.935"}, "c")
    decision = decide_promotion(0.935, 0.9, 0.01, reg.get_champion(client, name))
    moved = reg.apply_promotion(client, name, v3.version, decision)
    assert moved == {"challenger": str(v3.version)}
    assert client.get_model_version_by_alias(name, "champion").version == v2.version
    tags = client.get_model_version(name, v3.version).tags
    assert tags[reg.TAG_GATE_DECISION] == "not_promoted"
    assert "gain_over_champion" in tags[reg.TAG_GATE_REPORT]


def test_deploy_takes_the_variant_from_the_versions_own_run_not_from_tags(
    trained: dict[str, Any], tracking_uri: str
) -> None:
    """A tag writer points the serving profile at a document naming another variant file:
    deploy still loads the int8 variant logged under the registered version's run."""
    import json

    from mlflow.tracking import MlflowClient

    from operators.serving import DeployModelOperator

    client = MlflowClient(tracking_uri)
    name = "registry-variant-model"
    run_id = _new_run(client, "reg-variant")
    version, _ = reg.register_version(
        client, name, trained["result"]["model_uri"], run_id, {}, "variant"
    )
    client.log_dict(run_id, {"variant_uri": "file:///tmp/evil.tflite"}, "evil/profile.json")
    reg.record_serving_profile(client, name, version.version, f"runs:/{run_id}/evil/profile.json")
    op = DeployModelOperator(task_id="deploy-variant-test", plan={}, promotion={})
    uri = op._variant_uri(name, str(version.version), "int8")
    assert uri == f"runs:/{version.run_id}/serving/int8/variant_int8.tflite"
    assert op._variant_uri(name, str(version.version), "full") == ""
    assert "evil" not in json.dumps(uri)
