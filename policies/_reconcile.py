"""Serving reconciliation: make what the endpoint serves equal what the registry says.

The registry's ``champion`` alias is the truth; the endpoint can drift from it: a Ray head
restart drops every Serve application, a run's deploy can fail after its promote moved the
alias, a person can move the alias by hand. The ``ml_reconcile`` DAG asks this policy, per
model, whether to serve the champion again. It never undoes what someone is doing: a model
taken off on purpose stays off, a deploy in progress (or a canary) is left to finish unless it
is older than the grace period, in which case it is taken as abandoned.

Each model carries a *serving intent* (a registered-model tag) that the stages write:
``deploying`` when promote or rollback moves the champion, ``serving`` when a deploy ends,
``failed`` when a deploy fails, ``off`` when a person undeploys the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Intent states, as the stages record them on the registered model.
INTENT_DEPLOYING = "deploying"
INTENT_SERVING = "serving"
INTENT_FAILED = "failed"
INTENT_OFF = "off"
INTENT_STATES = (INTENT_DEPLOYING, INTENT_SERVING, INTENT_FAILED, INTENT_OFF)
#: A deploy recorded longer ago than this without ending is taken as abandoned (its worker
#: died with no chance to say so): longer than a profile plus a canary on a loaded cluster.
DEPLOY_GRACE_S = 3600.0


@dataclass(frozen=True)
class ServingIntent:
    """What the stages last said about serving a model: ``state`` of ``version``, by whom
    (``dag/run``), and when (epoch seconds)."""

    state: str
    version: str
    by: str
    since: float

    def __post_init__(self) -> None:
        if self.state not in INTENT_STATES:
            raise ValueError(f"unknown serving intent {self.state!r}: one of {INTENT_STATES}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ServingIntent:
        return cls(str(raw["state"]), str(raw["version"]), str(raw["by"]), float(raw["since"]))


@dataclass(frozen=True)
class ReconcileAction:
    """``serve``: deploy ``version`` (the champion) now, at once (no canary: nothing healthy
    serves to compare with, or what serves is not what the registry promoted)."""

    serve: bool
    version: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reconcile_action(
    *,
    champion: str | None,
    served: str | None,
    canary_candidate: str | None,
    intent: ServingIntent | None,
    now: float,
    grace_s: float = DEPLOY_GRACE_S,
) -> ReconcileAction:
    """Whether to serve ``champion`` again, and why (the reason is recorded on the version).

    ``served``: the version the endpoint's primary route answers with (None: nothing
    answers); ``canary_candidate``: a version getting a canary share now, if any.
    """

    def keep(reason: str) -> ReconcileAction:
        return ReconcileAction(False, None, reason)

    if intent is not None and intent.state == INTENT_OFF:
        return keep(f"taken off the endpoint on purpose by {intent.by}: stays off")
    if champion is None:
        return keep("no champion alias: nothing to serve (what serves, if anything, stays)")
    if served == champion and canary_candidate is None:
        return keep(f"v{champion} serves: in step with the registry")
    if intent is not None and intent.state == INTENT_DEPLOYING:
        age = now - intent.since
        if age < grace_s:
            return keep(
                f"a deploy of v{intent.version} by {intent.by} started {age:.0f}s ago: left to "
                f"finish (taken as abandoned after {grace_s:.0f}s)"
            )
    if canary_candidate is not None and intent is None:
        # no stage of this slaflow recorded it: whoever started that canary may still be at it
        return keep(f"a canary of v{canary_candidate} nobody recorded is running: left alone")
    if served is None:
        why = "nothing answers at the endpoint (its Serve applications are gone: a Ray restart?)"
    elif served != champion:
        why = f"v{served} serves but champion is v{champion} (a failed deploy or a moved alias)"
    else:
        why = f"a canary of v{canary_candidate} was left half-way (its deploy never ended)"
    if intent is not None and intent.state == INTENT_FAILED:
        why += f"; the deploy by {intent.by} failed"
    elif intent is not None and intent.state == INTENT_DEPLOYING:
        why += f"; the deploy by {intent.by} never ended"
    return ReconcileAction(True, champion, f"{why}: serve v{champion}")
