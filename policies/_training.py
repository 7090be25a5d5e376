"""Training-time decisions: how many workers, and whether to run another epoch.

Time is always passed in (seconds since the train task started), never read from a clock,
so tests and simulators drive these functions exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

#: Share of the deadline epochs may use; the rest is kept for export and logging (dynaSpark's
#: alpha).
DEADLINE_ALPHA = 0.95


class InfeasibleError(ValueError):
    """The contract cannot be met on this cluster; the message says what binds and by how much."""


@dataclass(frozen=True)
class WorkerPlan:
    num_workers: int
    cpus_per_worker: float
    reason: str


def plan_workers(max_workers: int, cpus_per_worker: float, free_cpus: float) -> WorkerPlan:
    """As many workers as the budget allows and the cluster's free CPUs hold (at least one)."""
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if cpus_per_worker <= 0:
        raise ValueError(f"cpus_per_worker must be > 0, got {cpus_per_worker}")
    fit = math.floor(free_cpus / cpus_per_worker + 1e-9)
    if fit < 1:
        raise InfeasibleError(
            f"one training worker needs {cpus_per_worker:g} CPUs but the Ray cluster has "
            f"{free_cpus:g} free: lower cpus_per_worker to <= {free_cpus:g} or free the cluster"
        )
    n = min(max_workers, fit)
    if n == max_workers:
        reason = f"{n} workers (the budget's max_workers); cluster has {free_cpus:g} free CPUs"
    else:
        reason = (f"{n} of max_workers={max_workers}: the cluster's {free_cpus:g} free CPUs "
                  f"hold {fit} workers of {cpus_per_worker:g} CPUs")
    return WorkerPlan(num_workers=n, cpus_per_worker=cpus_per_worker, reason=reason)


class StopReason(StrEnum):
    TARGET_MET = "target_met"
    DEADLINE_TRUNCATED = "deadline_truncated"
    TARGET_UNREACHABLE = "target_unreachable"
    MAX_EPOCHS = "max_epochs"
    ROUNDS_EXHAUSTED = "rounds_exhausted"  # federated: R rounds done below the target
    BUDGET_EXHAUSTED = "budget_exhausted"  # federated: network budget spent below the target


@dataclass(frozen=True)
class EpochDecision:
    run_next: bool
    stop_reason: StopReason | None
    predicted_next_epoch_s: float
    eta_s: float
    detail: str


def next_epoch_decision(
    *,
    elapsed_s: float,
    epoch_durations_s: Sequence[float],
    epochs_done: int,
    max_epochs: int,
    deadline_s: float,
    val_accuracy: float | None,
    stop_accuracy: float,
) -> EpochDecision:
    """Run another epoch only if the target is not met yet and it fits in the deadline.

    The next epoch is predicted as long as the slowest of the last three (a conservative
    estimate that absorbs jitter); it must end within ``DEADLINE_ALPHA * deadline_s``.
    """
    recent = list(epoch_durations_s[-3:])
    predicted = max(recent) if recent else 0.0
    eta = elapsed_s + predicted
    if val_accuracy is not None and val_accuracy >= stop_accuracy:
        return EpochDecision(False, StopReason.TARGET_MET, predicted, elapsed_s,
                             f"val accuracy {val_accuracy:.4f} >= {stop_accuracy:.4f}")
    if epochs_done >= max_epochs:
        return EpochDecision(False, StopReason.MAX_EPOCHS, predicted, elapsed_s,
                             f"{epochs_done} epochs = max_epochs")
    budget = DEADLINE_ALPHA * deadline_s
    if eta > budget:
        return EpochDecision(
            False, StopReason.DEADLINE_TRUNCATED, predicted, elapsed_s,
            f"next epoch would end at {eta:.1f}s > {budget:.1f}s "
            f"({DEADLINE_ALPHA:.0%} of the {deadline_s:g}s deadline)",
        )
    return EpochDecision(True, None, predicted, eta,
                         f"next epoch ends ~{eta:.1f}s of {budget:.1f}s budget")
