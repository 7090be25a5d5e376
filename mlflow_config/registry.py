"""MLflow tracking and registry conventions: experiment naming, run lookup, versions, aliases.

The one write path for every slaflow tag, model-version description and alias: operators,
jobs and the CLI call these functions and never write tags or move aliases themselves. Every
function takes an ``MlflowClient`` (built by ``operators.hooks.MlflowHook``), so the same code
works on the embedded SQLite store and on an MLflow server. Each write is idempotent per
Airflow run: a retried task finds what the first try made.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from policies import (
    CHALLENGER,
    CHAMPION,
    LEASE_TTL_S,
    PREVIOUS_CHAMPION,
    ChampionRecord,
    PromotionDecision,
    ServingIntent,
    lease_state,
    promotion_description,
)

EXPERIMENT_PREFIX = "slaflow"
TAG_RUN_KEY = "slaflow.run_key"
TAG_AIRFLOW_RUN_ID = "slaflow.airflow_run_id"
TAG_DAG_ID = "slaflow.dag_id"
TAG_CONTRACT = "slaflow.contract"
TAG_STARTED_AT = "slaflow.train_started_at"
TAG_TEST_ACCURACY = "slaflow.test_accuracy"
TAG_GATE_DECISION = "slaflow.gate.decision"
TAG_GATE_REPORT = "slaflow.gate.report"
TAG_GATE_REASONS = "slaflow.gate.reasons"
TAG_REVIEW = "slaflow.review"
TAG_MODEL_PARAMS = "slaflow.model_params"
TAG_AIRFLOW_RUN_URL = "slaflow.airflow_run_url"
TAG_SERVING = "slaflow.serving"
TAG_SERVING_PROFILE = "slaflow.serving.profile"
TAG_ROLLED_BACK = "slaflow.rolled_back_by"
TAG_VERIFY = "slaflow.verify"
TAG_CALIBRATION_KEY = "slaflow.calibration_key"
TAG_FEASIBILITY = "slaflow.feasibility"
TAG_MLLIB_RESULT = "slaflow.mllib_result"
#: SHA-256 of the version's model artifacts at registration (``ray_jobs.model_format.
#: artifact_digest``); every replica checks what it downloaded against it.
TAG_ARTIFACT_SHA256 = "slaflow.artifact_sha256"
#: The same for the int8 serving variant's folder (flatbuffer and metadata), when there is one.
TAG_VARIANT_SHA256 = "slaflow.variant_int8_sha256"
#: On the registered model: what the stages last said about serving it (policies.ServingIntent).
TAG_SERVING_INTENT = "slaflow.serving.intent"
#: On a version: what ml_reconcile last did for it, and why.
TAG_RECONCILED = "slaflow.reconciled"
PENDING_REVIEW = "pending_review"


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


def start_training_run(
    client: Any,
    experiment_id: str,
    run_key: str,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any],
) -> tuple[str, float]:
    """The training run of this Airflow run, created with its tags and params on the first
    try and found again on a retry; ``(run_id, started_at)`` where ``started_at`` is when the
    first try began (the deadline clock does not restart on a retry)."""
    from mlflow.entities import Param

    run_id, created = find_or_create_run(
        client, experiment_id, run_key, run_name, {**tags, TAG_STARTED_AT: repr(time.time())}
    )
    if created:
        client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run_id, float(client.get_run(run_id).data.tags[TAG_STARTED_AT])


def run_tag(client: Any, run_id: str, tag: str) -> str | None:
    value = client.get_run(run_id).data.tags.get(tag)
    return None if value is None else str(value)


def set_run_tag(client: Any, run_id: str, tag: str, value: str) -> None:
    client.set_tag(run_id, tag, value)


def record_training(
    client: Any, run_id: str, *, training_mode: str, stop_reason: Any, outcome: Any
) -> None:
    """How training ended, on the run (the same tags go on the version at registration)."""
    client.set_tag(run_id, "slaflow.training_mode", training_mode)
    client.set_tag(run_id, "slaflow.stop_reason", str(stop_reason))
    client.set_tag(run_id, "slaflow.outcome", str(outcome))


def version_tag(client: Any, model_name: str, version: str, tag: str) -> str | None:
    value = client.get_model_version(model_name, version).tags.get(tag)
    return None if value is None else str(value)


def version_test_accuracy(
    client: Any, model_name: str, version: str, metric_name: str = "accuracy"
) -> float:
    """A version's test score in ``metric_name`` (``policies.Metric.score``: the metric itself
    where higher is better, 1 - error for rmse/mae): for accuracy its tag, else its run's
    ``test_<metric>``; 0 when the run has none."""
    from policies import metric

    mv = client.get_model_version(model_name, version)
    if metric_name == "accuracy" and TAG_TEST_ACCURACY in mv.tags:
        return float(mv.tags[TAG_TEST_ACCURACY])
    run = client.get_run(mv.run_id) if mv.run_id else None
    value = run.data.metrics.get(f"test_{metric_name}") if run else None
    return 0.0 if value is None else metric(metric_name).score(float(value))


def get_champion(
    client: Any, model_name: str, metric_name: str = "accuracy"
) -> ChampionRecord | None:
    """The version holding ``champion`` and its test score in ``metric_name``, or None.

    Raises ValueError when the champion was never measured in that metric (it was trained
    for another task): the gate would have nothing to compare."""
    from policies import metric

    version = get_alias_version(client, model_name, CHAMPION)
    if version is None:
        return None
    score: float | None = None
    if metric_name == "accuracy" and version.tags.get(TAG_TEST_ACCURACY) is not None:
        score = float(version.tags[TAG_TEST_ACCURACY])
    else:  # other metrics, or a champion set by hand outside slaflow: its run's metric
        value = client.get_run(version.run_id).data.metrics.get(f"test_{metric_name}")
        if value is None:
            raise ValueError(
                f"the champion of {model_name!r} (v{version.version}) has no test "
                f"{metric_name}: it was trained for another task or metric. Fix: give the run "
                f"a new model_name, or a target_metric the champion was measured in"
            )
        score = metric(metric_name).score(float(value))
    cost = version.tags.get(TAG_MODEL_PARAMS)
    return ChampionRecord(
        version=str(version.version),
        accuracy=score,
        cost=None if cost is None else float(cost),
    )


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
            model_name,
            description="Registered by slaflow: each version is one run of "
            "ml_lifecycle; see its tags for the contract and the gate decision.",
        )
    except MlflowException:
        pass  # already exists
    existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    if existing:
        return min(existing, key=lambda v: int(v.version)), False
    # A tracking server requires the logged model's id with a ``models:/m-...`` source.
    model_id = model_uri[len("models:/") :] if model_uri.startswith("models:/m-") else None
    version = client.create_model_version(
        model_name,
        source=model_uri,
        run_id=run_id,
        tags=tags,
        description=description,
        model_id=model_id,
    )
    deadline = time.monotonic() + timeout_s
    while version.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(0.5)
        version = client.get_model_version(model_name, version.version)
    if version.status != "READY":
        raise RuntimeError(f"model version {model_name} v{version.version} is {version.status}")
    return version, True


def record_gate(
    client: Any,
    model_name: str,
    version: str,
    decision: PromotionDecision,
    report: dict[str, Any],
    pending_review: bool,
) -> None:
    """Write the gate's report on the version (``pending_review`` while a person decides)."""
    client.set_model_version_tag(
        model_name,
        version,
        TAG_GATE_DECISION,
        PENDING_REVIEW if pending_review else ("promoted" if decision.promote else "not_promoted"),
    )
    client.set_model_version_tag(
        model_name, version, TAG_GATE_REPORT, json.dumps({**report, **decision.to_dict()})
    )
    client.set_model_version_tag(model_name, version, TAG_GATE_REASONS, "; ".join(decision.reasons))


def apply_promotion(
    client: Any,
    model_name: str,
    version: str,
    decision: PromotionDecision,
    report: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Record the gate decision on the version (tags, description, and the training run's
    tag when ``run_id`` is given) and move aliases. Safe to repeat.

    ``champion`` moves to ``version`` (the old one becomes ``previous_champion``) only when
    promoted; otherwise ``version`` becomes ``challenger``.
    """
    record_gate(client, model_name, version, decision, report or {}, pending_review=False)
    if run_id:
        client.set_tag(
            run_id, TAG_GATE_DECISION, "promoted" if decision.promote else "not_promoted"
        )
    registered = client.get_model_version(model_name, version).description or ""
    described = promotion_description(registered, decision)
    if described != registered:
        client.update_model_version(model_name, version, description=described)
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


class RollbackError(RuntimeError):
    """No rollback is possible; the message says why and what to do."""


def rollback(client: Any, model_name: str, marker: str, to: str | None = None) -> dict[str, str]:
    """Move ``champion`` back to ``previous_champion`` (or to ``to``: the version a canary
    found serving, which need not be ``previous_champion``). Idempotent per ``marker``.

    The demoted version keeps its tags, gets ``slaflow.rolled_back_by = marker`` and the
    ``challenger`` alias is left alone; ``previous_champion`` is removed (there is no older
    champion on record to take its place). A retry with the same marker finds the demoted
    version by its tag and returns the same answer without moving anything again.
    """
    done = client.search_model_versions(
        f"name = '{model_name}' and tags.`{TAG_ROLLED_BACK}` = '{marker}'"
    )
    if done:
        demoted = done[0]
        champion = get_alias_version(client, model_name, CHAMPION)
        return {
            "champion": str(champion.version) if champion else "",
            "demoted": str(demoted.version),
            "repeated": "true",
        }
    previous = (
        get_alias_version(client, model_name, PREVIOUS_CHAMPION)
        if to is None
        else client.get_model_version(model_name, to)
    )
    if previous is None:
        raise RollbackError(
            f"model {model_name!r} has no '{PREVIOUS_CHAMPION}' alias: there is no earlier "
            f"champion to roll back to. Fix: set the alias on the version to restore in the "
            f"MLflow UI (or with MlflowClient.set_registered_model_alias), then roll back again"
        )
    current = get_alias_version(client, model_name, CHAMPION)
    client.set_registered_model_alias(model_name, CHAMPION, previous.version)
    before = get_alias_version(client, model_name, PREVIOUS_CHAMPION)
    if before is not None and str(before.version) == str(previous.version):
        client.delete_registered_model_alias(model_name, PREVIOUS_CHAMPION)
    if current is not None and str(current.version) == str(previous.version):
        current = None  # champion already there: nothing is demoted
    demoted = "" if current is None else str(current.version)
    if current is not None:
        client.set_model_version_tag(model_name, current.version, TAG_ROLLED_BACK, marker)
        client.set_model_version_tag(model_name, current.version, TAG_GATE_DECISION, "rolled_back")
    return {"champion": str(previous.version), "demoted": demoted, "repeated": "false"}


def record_serving_profile(client: Any, model_name: str, version: str, uri: str) -> None:
    """Point the version at its serving profile (``runs:/.../serving/profile.json``)."""
    client.set_model_version_tag(model_name, version, TAG_SERVING_PROFILE, uri)


def record_serving(client: Any, model_name: str, version: str, record: dict[str, Any]) -> None:
    """What serves this version now: endpoint, plan, tiers, canary steps, who deployed it."""
    client.set_model_version_tag(model_name, version, TAG_SERVING, json.dumps(record))


def set_serving_intent(client: Any, model_name: str, state: str, version: str, by: str) -> None:
    """Record on the registered model what serving should be now (``ml_reconcile`` reads it):
    ``deploying`` (promote or rollback moved champion), ``serving``, ``failed`` or ``off``."""
    intent = ServingIntent(state, str(version), by, time.time())
    client.set_registered_model_tag(model_name, TAG_SERVING_INTENT, json.dumps(intent.to_dict()))


def serving_intent(client: Any, model_name: str) -> Any | None:
    """The model's ``policies.ServingIntent``, or None (never recorded, or unreadable: a
    hand-edited tag counts as unknown, never as an order)."""
    raw = client.get_registered_model(model_name).tags.get(TAG_SERVING_INTENT)
    try:
        return None if not raw else ServingIntent.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        return None


def serving_record(client: Any, model_name: str, version: str) -> dict[str, Any] | None:
    raw = version_tag(client, model_name, version, TAG_SERVING)
    return None if not raw else dict(json.loads(raw))


def record_verify(
    client: Any,
    *,
    model_name: str,
    version: str,
    run_id: str,
    metrics: dict[str, float],
    verdict: dict[str, Any],
    figure: Any,
) -> None:
    """The endpoint check: metrics and the latency histogram on the training run, the
    verdict with its reasons on the version."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])
    client.log_figure(run_id, figure, "serving/verify_latency.png")
    client.set_model_version_tag(model_name, version, TAG_VERIFY, json.dumps(verdict))


#: A model's lease is a registered model of its own, ``slaflow-lock.<model>``: creating a
#: registered model is atomic in the registry's database (its name is unique), which a tag
#: write is not. It exists only while held.
LOCK_PREFIX = "slaflow-lock."


#: Leases this process holds now, so a nested ``model_lease`` of the same holder does not
#: release the outer one (a lease found held by the same holder but not here is a crashed
#: try's: taken over, and released at the end).
_HELD_HERE: set[tuple[str, str]] = set()


class LeaseBusy(RuntimeError):
    """Another run holds the model's lease longer than this one may wait; names who."""


def is_lock(model_name: str) -> bool:
    return model_name.startswith(LOCK_PREFIX)


@contextmanager
def model_lease(
    client: Any,
    model_name: str,
    holder: str,
    *,
    ttl_s: float = LEASE_TTL_S,
    wait_s: float = 600.0,
    poll_s: float = 1.0,
    clock: Callable[[], float] = time.time,
) -> Iterator[None]:
    """Hold ``model_name``'s lease for the block: one writer of its aliases and serving at a
    time (``policies.lease_state``). Waits up to ``wait_s`` for another holder, then raises
    ``LeaseBusy`` naming it (the Airflow task fails and is retried). Re-entrant for the same
    ``holder`` (a retry of the same run), taken over once expired (a holder that died)."""
    from mlflow.exceptions import MlflowException

    name = LOCK_PREFIX + model_name
    if (name, holder) in _HELD_HERE:  # nested in this process: the outer block releases it
        yield
        return
    deadline = time.monotonic() + wait_s
    while True:
        until = clock() + ttl_s
        try:
            client.create_registered_model(
                name,
                tags={"holder": holder, "until": repr(until)},
                description=f"slaflow's lease on {model_name}: {holder} changes it now",
            )
            break
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                # MLflow's store answers a lost create race by reading the row that won, and
                # that holder released it in between (seen in CI, 2026-12-07): free again
                continue
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            tags = dict(client.get_registered_model(name).tags)
        except MlflowException:  # released meanwhile
            continue
        try:
            held_until: float | None = float(tags["until"])
        except (KeyError, ValueError):
            held_until = None
        state = lease_state(holder=tags.get("holder"), until=held_until, me=holder, now=clock())
        if state == "mine":
            client.set_registered_model_tag(name, "until", repr(until))
            break
        if state == "expired":
            _delete_if_unchanged(client, name, tags)
            continue
        if time.monotonic() > deadline:
            raise LeaseBusy(
                f"model {model_name!r} is being changed by {tags.get('holder')} (lease until "
                f"{time.strftime('%H:%M:%S', time.gmtime(held_until or 0))} UTC); waited "
                f"{wait_s:.0f}s. It is released when that run's task ends; a crashed holder's "
                f"lease expires by itself"
            )
        time.sleep(poll_s)
    _HELD_HERE.add((name, holder))
    try:
        yield
    finally:
        _HELD_HERE.discard((name, holder))
        _delete_if_unchanged(client, name, None, holder=holder)


def _delete_if_unchanged(
    client: Any, name: str, seen: dict[str, str] | None, holder: str | None = None
) -> None:
    """Delete the lease ``name`` if it is still the one seen (or still ``holder``'s): never a
    lease someone else took meanwhile."""
    from mlflow.exceptions import MlflowException

    try:
        tags = dict(client.get_registered_model(name).tags)
        if (seen is not None and tags == seen) or (
            holder is not None and tags.get("holder") == holder
        ):
            client.delete_registered_model(name)
    except MlflowException:  # gone already
        pass
