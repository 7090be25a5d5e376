"""Registry conventions on a real MLflow store (SQLite): idempotent versions and aliases."""

from __future__ import annotations

from typing import Any

import numpy as np
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


def test_one_writer_per_model_holds_its_lease_on_the_registry(tracking_uri: str) -> None:
    """model_lease on the real store: a second run waits until the first releases (never two
    inside at once), the same run re-enters its own lease (a retry), a lease whose holder died
    is taken over once expired, one held too long fails naming its holder, and another model
    is never blocked."""
    import threading
    import time

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    model = "lease-test-model"
    inside: list[str] = []
    order: list[str] = []

    def writer(holder: str, hold_s: float) -> None:
        with reg.model_lease(client, model, holder, wait_s=30, poll_s=0.05):
            inside.append(holder)
            assert len(inside) == 1, inside  # alone
            order.append(f"{holder} in")
            time.sleep(hold_s)
            order.append(f"{holder} out")
            inside.remove(holder)

    threads = [threading.Thread(target=writer, args=(f"run-{i}", 0.3)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(order) == 6 and all(
        order[i].endswith(" in") and order[i + 1] == order[i].replace(" in", " out")
        for i in range(0, 6, 2)
    ), order
    assert client.search_registered_models(f"name = '{reg.LOCK_PREFIX}{model}'") == []

    with reg.model_lease(client, model, "run-a"):
        with reg.model_lease(client, model, "run-a", wait_s=0):  # a retry of the same run
            pass
        with reg.model_lease(client, "other-model", "run-b", wait_s=0):  # not blocked
            pass
        with pytest.raises(reg.LeaseBusy, match="being changed by run-a"):
            with reg.model_lease(client, model, "run-b", wait_s=0.2, poll_s=0.05):
                pass

    # a holder that died: its lease stays until it expires, then the next run takes it
    client.create_registered_model(
        reg.LOCK_PREFIX + model, tags={"holder": "run-dead", "until": repr(time.time() - 1)}
    )
    with reg.model_lease(client, model, "run-c", wait_s=0):
        holder = client.get_registered_model(reg.LOCK_PREFIX + model).tags["holder"]
        assert holder == "run-c"
    assert client.search_registered_models(f"name = '{reg.LOCK_PREFIX}{model}'") == []


def test_a_model_changed_after_registration_is_refused_where_replicas_load_it(
    prepared: dict[str, Any], tracking_uri: str, tmp_path: Any
) -> None:
    """The digest recorded at registration against the artifact store: the replicas' fetch
    (``fetch_verified``, before any load) takes the registered files, and refuses them once
    one byte changed in the store (a trailing space the model itself would never notice),
    naming both digests."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from ray_jobs.model_format import (
        ArtifactDigestMismatch,
        artifact_digest,
        fetch_verified,
        find_model_dir,
        open_predictor,
    )
    from tests.conftest import log_untrained_model

    for sub in "abcdef":
        (tmp_path / sub).mkdir()
    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    run = _new_run(client, "digest-run")
    uri = log_untrained_model(run, prepared, "digest_model")
    version, _ = reg.register_version(client, "digest-test-model", uri, run, {}, "digest test")
    registered = artifact_digest(mlflow.artifacts.download_artifacts(uri, dst_path=tmp_path / "a"))
    served_uri = f"models:/digest-test-model/{version.version}"  # as the deploy task gives it
    predictor = open_predictor(
        find_model_dir(fetch_verified(served_uri, tmp_path / "b", registered))
    )
    assert predictor.predict_proba(np.zeros((1, 64))).shape == (1, len(prepared["classes"]))

    store = client.get_run(run).info.artifact_uri.removeprefix("file://")
    with open(f"{store}/digest_model/slaflow_model.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(ArtifactDigestMismatch, match=registered):
        fetch_verified(served_uri, tmp_path / "c", registered)

    # the int8 variant's folder is checked the same way (register records its digest, each
    # replica serving the variant fetches the folder through fetch_verified)
    from ray_jobs.variants import INT8_ARTIFACT_PATH, INT8_FILE

    variant = tmp_path / "variant"
    variant.mkdir()
    (variant / INT8_FILE).write_bytes(bytes(range(256)) * 64)
    (variant / "slaflow_model.json").write_text('{"n": 1}')
    client.log_artifacts(run, str(variant), INT8_ARTIFACT_PATH)
    folder_uri = f"runs:/{run}/{INT8_ARTIFACT_PATH}"
    at_register = artifact_digest(
        mlflow.artifacts.download_artifacts(folder_uri, dst_path=str(tmp_path / "d"))
    )
    assert (fetch_verified(folder_uri, tmp_path / "e", at_register) / INT8_FILE).exists()
    flatbuffer = f"{store}/{INT8_ARTIFACT_PATH}/{INT8_FILE}"
    data = bytearray(open(flatbuffer, "rb").read())
    data[100] ^= 1  # one bit of one weight
    open(flatbuffer, "wb").write(bytes(data))
    with pytest.raises(ArtifactDigestMismatch, match=at_register):
        fetch_verified(folder_uri, tmp_path / "f", at_register)
