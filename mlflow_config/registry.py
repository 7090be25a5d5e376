"""MLflow tracking and registry conventions: experiment naming, run lookup, versions, aliases.

Every function takes an ``MlflowClient`` (built by ``operators.hooks.MlflowHook``), so the
same code works on the embedded SQLite store and on an MLflow server. Each write is
idempotent per Airflow run: a retried task finds what the first try made.
"""

from __future__ import annotations

import json
import time
from typing import Any

from policies import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION, ChampionRecord, PromotionDecision

EXPERIMENT_PREFIX = "slaflow"
TAG_RUN_KEY = "slaflow.run_key"
TAG_AIRFLOW_RUN_ID = "slaflow.airflow_run_id"
TAG_DAG_ID = "slaflow.dag_id"
TAG_CONTRACT = "slaflow.contract"
TAG_STARTED_AT = "slaflow.train_started_at"
TAG_TEST_ACCURACY = "slaflow.test_accuracy"
TAG_GATE_DECISION = "slaflow.gate.decision"
TAG_GATE_REPORT = "slaflow.gate.report"


def experiment_name(model_name: str) -> str:
    return f"{EXPERIMENT_PREFIX}/{model_name}"


def get_or_create_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_location))
    except MlflowException:  # another task created it between our read and write
        return str(client.get_experiment_by_name(name).experiment_id)


def find_or_create_run(
    client: Any, experiment_id: str, run_key: str, run_name: str, tags: dict[str, str]
) -> tuple[str, bool]:
    """The MLflow run of this Airflow run (one per run key); ``(run_id, created)``."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_RUN_KEY}` = '{run_key}'", max_results=1
    )
    if found:
        return str(found[0].info.run_id), False
    run = client.create_run(experiment_id, run_name=run_name, tags={TAG_RUN_KEY: run_key, **tags})
    return str(run.info.run_id), True


def get_champion(client: Any, model_name: str) -> ChampionRecord | None:
    """The version holding ``champion`` and its recorded test accuracy, or None."""
    version = get_alias_version(client, model_name, CHAMPION)
    if version is None:
        return None
    accuracy = version.tags.get(TAG_TEST_ACCURACY)
    if accuracy is None:  # a champion set by hand, outside slaflow: read its run's metric
        run = client.get_run(version.run_id)
        accuracy = run.data.metrics.get("test_accuracy", 0.0)
    return ChampionRecord(version=str(version.version), accuracy=float(accuracy))


def get_alias_version(client: Any, model_name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:  # no such model or alias
        return None


def register_version(
    client: Any,
    model_name: str,
    model_uri: str,
    run_id: str,
    tags: dict[str, str],
    description: str,
    timeout_s: float = 120.0,
) -> tuple[Any, bool]:
    """Register ``model_uri`` once per MLflow run; a retry returns the first version."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            model_name, description="Registered by slaflow: each version is one run of "
            "ml_lifecycle; see its tags for the contract and the gate decision.")
    except MlflowException:
        pass  # already exists
    existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    if existing:
        return min(existing, key=lambda v: int(v.version)), False
    # A tracking server requires the logged model's id with a ``models:/m-...`` source.
    model_id = model_uri[len("models:/"):] if model_uri.startswith("models:/m-") else None
    version = client.create_model_version(
        model_name, source=model_uri, run_id=run_id, tags=tags, description=description,
        model_id=model_id,
    )
    deadline = time.monotonic() + timeout_s
    while version.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(0.5)
        version = client.get_model_version(model_name, version.version)
    if version.status != "READY":
        raise RuntimeError(f"model version {model_name} v{version.version} is {version.status}")
    return version, True


def apply_promotion(
    client: Any, model_name: str, version: str, decision: PromotionDecision
) -> dict[str, Any]:
    """Record the gate decision on the version and move aliases. Safe to repeat.

    ``champion`` moves to ``version`` (the old one becomes ``previous_champion``) only when
    promoted; otherwise ``version`` becomes ``challenger``.
    """
    client.set_model_version_tag(model_name, version, TAG_GATE_DECISION,
                                 "promoted" if decision.promote else "not_promoted")
    client.set_model_version_tag(model_name, version, TAG_GATE_REPORT,
                                 json.dumps(decision.to_dict()))
    moved: dict[str, Any] = {}
    if decision.promote:
        current = get_alias_version(client, model_name, CHAMPION)
        if current is not None and str(current.version) != str(version):
            client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, current.version)
            moved[PREVIOUS_CHAMPION] = str(current.version)
        client.set_registered_model_alias(model_name, CHAMPION, version)
        moved[CHAMPION] = str(version)
        challenger = get_alias_version(client, model_name, CHALLENGER)
        if challenger is not None and str(challenger.version) == str(version):
            client.delete_registered_model_alias(model_name, CHALLENGER)
    else:
        client.set_registered_model_alias(model_name, CHALLENGER, version)
        moved[CHALLENGER] = str(version)
    return moved
