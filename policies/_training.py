"""Training-time decisions: how many workers, and whether to run another epoch.

Time is always passed in (seconds since the train task started), never read from a clock,
so tests and simulators drive these functions exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from policies._footprint import ServingFootprint

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


def plan_workers(
    max_workers: int,
    cpus_per_worker: float,
    free_cpus: float,
    serving: ServingFootprint | None = None,
) -> WorkerPlan:
    """As many workers as the budget allows and the cluster's free CPUs hold (at least one).

    When not even one fits, the error names what served models hold (``serving``): they are
    the usual reason a small cluster has no CPU left for training."""
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if cpus_per_worker <= 0:
        raise ValueError(f"cpus_per_worker must be > 0, got {cpus_per_worker}")
    fit = math.floor(free_cpus / cpus_per_worker + 1e-9)
    if fit < 1:
        held = (
            ""
            if serving is None or not serving.deployments
            else f"; served models hold {serving.cpus:g} CPU: {serving.describe()}"
        )
        raise InfeasibleError(
            f"one training worker needs {cpus_per_worker:g} CPUs but the Ray cluster has "
            f"{free_cpus:g} free{held}: lower cpus_per_worker to <= {free_cpus:g}, or free "
            f"the cluster (`make undeploy MODEL=<name>` takes a model off the endpoint)"
        )
    n = min(max_workers, fit)
    if n == max_workers:
        reason = f"{n} workers (the budget's max_workers); cluster has {free_cpus:g} free CPUs"
    else:
        reason = (
            f"{n} of max_workers={max_workers}: the cluster's {free_cpus:g} free CPUs "
            f"hold {fit} workers of {cpus_per_worker:g} CPUs"
        )
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
        return EpochDecision(
            False,
            StopReason.TARGET_MET,
            predicted,
            elapsed_s,
            f"val accuracy {val_accuracy:.4f} >= {stop_accuracy:.4f}",
        )
    if epochs_done >= max_epochs:
        return EpochDecision(
            False, StopReason.MAX_EPOCHS, predicted, elapsed_s, f"{epochs_done} epochs = max_epochs"
        )
    budget = DEADLINE_ALPHA * deadline_s
    if eta > budget:
        return EpochDecision(
            False,
            StopReason.DEADLINE_TRUNCATED,
            predicted,
            elapsed_s,
            f"next epoch would end at {eta:.1f}s > {budget:.1f}s "
            f"({DEADLINE_ALPHA:.0%} of the {deadline_s:g}s deadline)",
        )
    return EpochDecision(
        True, None, predicted, eta, f"next epoch ends ~{eta:.1f}s of {budget:.1f}s budget"
    )


def early_stop_accuracy(*, stop_margin: float, required: float) -> float:
    """Validation accuracy at which training stops early: what the gate needs plus the
    contract's ``stop_margin`` (the gate reads the test set, a different sample; a model
    stopped exactly at the threshold fails it about half the time), capped at 0.999."""
    return min(0.999, stop_margin + required)


def deadline_met(training_seconds: float, deadline_s: float) -> bool:
    """Whether training (from the first try of the train task to the exported model) ended
    within the contract's deadline."""
    return training_seconds <= deadline_s


def cluster_capacity(
    *, free_cpus: float, cpus_per_worker: float, free_gpus: float = 0.0
) -> dict[str, int]:
    """Training workers each resource shape can start now: ``cpu`` always (possibly 0),
    ``gpu`` when a GPU is free (one GPU per worker, its CPUs from the same pool)."""
    cpu = int(free_cpus // cpus_per_worker + 1e-9) if cpus_per_worker > 0 else 0
    out = {"cpu": cpu}
    if int(free_gpus) >= 1:
        out["gpu"] = min(int(free_gpus), cpu)
    return out


def calibration_worker_counts(max_workers: int, capacity: int) -> list[int]:
    """Worker counts a calibration measures: 1, 2 and the most usable, no more than fit
    (one or two points fix Amdahl's law; the largest is what a tight deadline would use)."""
    if capacity < 1:
        return []
    return sorted({1, min(2, max_workers, capacity), min(max_workers, capacity)})


@dataclass(frozen=True)
class TrainingSize:
    workers: int
    usable: int
    reason: str


def size_training(
    *, feasible: bool, planned_workers: int, max_workers: int, capacity: int, resize_policy: str
) -> TrainingSize:
    """Workers training starts with. ``static``: every usable worker (``max_workers`` when
    they fit). ``deadline``: the fewest the feasibility plan found; an infeasible contract
    trained anyway (best effort) gets every usable worker, its best chance."""
    usable = max(1, min(max_workers, capacity))
    if resize_policy == "static":
        return TrainingSize(usable, usable, f"static sizing: {usable} workers throughout")
    if not feasible:
        return TrainingSize(
            usable, usable, f"infeasible contract trained anyway: all {usable} usable workers"
        )
    n = max(1, min(planned_workers, usable))
    return TrainingSize(
        n,
        usable,
        f"deadline sizing: the fewest workers that finish in time, {n} of {usable} usable",
    )
