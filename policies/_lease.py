"""One writer per model: the state of a model's lease, as its holder and expiry say.

Promote, deploy (with its canary rollback), ``ml_rollback``, ``ml_undeploy`` and
``ml_reconcile`` each move a model's aliases or serving from several reads and writes; two of
them at once on one model could leave ``champion`` and the endpoint disagreeing. Each takes
the model's lease first (``mlflow_config.registry.model_lease``: an atomic create in the
registry's database). A lease names its holder (``dag_id/run_id``: every try of one run is the
same holder, so a retry re-enters its own lease) and expires, so a holder that died (a killed
worker) blocks the model only until then.
"""

from __future__ import annotations

from typing import Literal

LeaseState = Literal["mine", "held", "expired"]
#: How long a lease lasts unless released: longer than a deploy with its canary on a loaded
#: cluster, short enough that a crashed holder does not block a model for long.
LEASE_TTL_S = 1800.0


def lease_state(*, holder: str | None, until: float | None, me: str, now: float) -> LeaseState:
    """``mine``: ``me`` holds it (a retry of the same run); ``held``: someone else does, until
    ``until``; ``expired``: its holder is gone or it carries no readable expiry (a lease
    nobody can vouch for must not block a model for ever)."""
    if holder == me:
        return "mine"
    if holder is None or until is None or until <= now:
        return "expired"
    return "held"
