"""The per-epoch decision of a training job: stop, continue, or resize for the next segment.

Composes the accuracy policy (target met / unreachable), the deadline guard (the next epoch
must end within ``DEADLINE_ALPHA`` of the deadline) and the deadline controller (fewest
worker-seconds that still finish in time). The training job calls :func:`after_epoch` on rank
0 after every epoch and broadcasts the result.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from policies._accuracy import Outcome, assess_target
from policies._deadline import (
    DEFAULT_CONFIG,
    ControlDecision,
    ControllerConfig,
    ControllerState,
    control_step,
)
from policies._feasibility import ThroughputModel
from policies._training import DEADLINE_ALPHA, StopReason, next_epoch_decision

#: Planned epochs are the extrapolated epochs to the target times this safety factor.
PLAN_SAFETY = 1.15


class Action(StrEnum):
    CONTINUE = "continue"
    RESIZE = "resize"
    STOP = "stop"


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch as the job measured it."""

    epoch: int
    workers: int
    duration_s: float
    val_accuracy: float
    first_of_segment: bool = False


@dataclass(frozen=True)
class EpochPlan:
    action: Action
    workers: int
    stop_reason: StopReason | None
    epochs_planned: int
    eta_s: float
    state: ControllerState
    control: ControlDecision | None
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {
            "action": self.action.value,
            "workers": self.workers,
            "stop_reason": None if self.stop_reason is None else self.stop_reason.value,
            "epochs_planned": self.epochs_planned,
            "eta_s": round(self.eta_s, 2) if math.isfinite(self.eta_s) else None,
            "control": None if self.control is None else self.control.to_dict(),
            "detail": self.detail,
        }


def measured_model(base: ThroughputModel, records: Sequence[EpochRecord]) -> ThroughputModel:
    """``base`` corrected by this run's measured epoch times.

    Measured worker counts take the median of their warm epochs (the first epoch of a
    segment carries graph building and is left out when there are others); unmeasured counts
    are scaled by the median ratio measured / calibrated, so a job slower than its calibration
    is predicted slower at every size.
    """
    by_n: dict[int, list[EpochRecord]] = {}
    for r in records:
        by_n.setdefault(r.workers, []).append(r)
    measured: dict[int, float] = {}
    for n, recs in by_n.items():
        warm = [r.duration_s for r in recs if not r.first_of_segment]
        measured[n] = statistics.median(warm or [r.duration_s for r in recs])
    if not measured:
        return base
    ratio = statistics.median(t / base.epoch_seconds(n) for n, t in measured.items())
    table = {n: t * ratio for n, t in base.epoch_s.items()}
    table.update(measured)
    ref = ThroughputModel(base.shape, table, base.startup_s, base.price_per_worker_s, base.source)
    if len(measured) == 1:
        # Keep the calibrated scaling shape, re-anchored on the one measured count.
        ((n0, t0),) = measured.items()
        shape_ratio = t0 / base.epoch_seconds(n0)
        full = {n: base.epoch_seconds(n) * shape_ratio for n in range(1, max(table) + 1)}
        full.update(measured)
        return ThroughputModel(
            base.shape, full, base.startup_s, base.price_per_worker_s, base.source
        )
    return ref


def outcome(
    stop_reason: StopReason | str | None, best_val_accuracy: float, stop_accuracy: float
) -> Outcome:
    """The three-way label the promotion gate reads."""
    if best_val_accuracy >= stop_accuracy or stop_reason == StopReason.TARGET_MET:
        return Outcome.TARGET_MET
    if stop_reason == StopReason.DEADLINE_TRUNCATED:
        return Outcome.DEADLINE_TRUNCATED
    return Outcome.TARGET_UNREACHABLE


def single_fit_stop_reason(
    val_accuracy: float, stop_accuracy: float, elapsed_s: float, deadline_s: float
) -> StopReason:
    """Why a one-shot fit (no epochs to steer, e.g. MLlib's solver) ended where it did."""
    if val_accuracy >= stop_accuracy:
        return StopReason.TARGET_MET
    if elapsed_s > deadline_s:
        return StopReason.DEADLINE_TRUNCATED
    return StopReason.MAX_EPOCHS


def after_epoch(
    *,
    now_s: float,
    deadline_s: float,
    records: Sequence[EpochRecord],
    max_epochs: int,
    stop_accuracy: float,
    workers: int,
    max_workers: int,
    model: ThroughputModel,
    state: ControllerState,
    prior_epochs: int,
    resize: bool = True,
    stop_when_unreachable: bool = True,
    config: ControllerConfig = DEFAULT_CONFIG,
) -> EpochPlan:
    """Decide what happens after the epoch just recorded in ``records`` (time passed in)."""
    if not records:
        raise ValueError("after_epoch needs at least the epoch just finished")
    done = len(records)
    accs = [r.val_accuracy for r in records]
    current = [r.duration_s for r in records if r.workers == workers]
    guard = next_epoch_decision(
        elapsed_s=now_s,
        epoch_durations_s=current or [records[-1].duration_s],
        epochs_done=done,
        max_epochs=max_epochs,
        deadline_s=deadline_s,
        val_accuracy=accs[-1],
        stop_accuracy=stop_accuracy,
    )
    if not guard.run_next:
        assert guard.stop_reason is not None
        return EpochPlan(
            Action.STOP, workers, guard.stop_reason, done, now_s, state, None, guard.detail
        )

    model = measured_model(model, records)
    fastest = min(model.epoch_seconds(n) for n in range(1, max(max_workers, 1) + 1))
    time_left = max(0.0, DEADLINE_ALPHA * deadline_s - now_s)
    affordable = min(float(max_epochs), done + time_left / fastest)
    outlook = assess_target(accs, stop_accuracy, affordable)
    if not outlook.reachable and stop_when_unreachable:
        return EpochPlan(
            Action.STOP,
            workers,
            StopReason.TARGET_UNREACHABLE,
            done,
            now_s,
            state,
            None,
            f"target unreachable: {outlook.detail}",
        )

    if math.isfinite(outlook.predicted_epochs_needed):
        planned = math.ceil(outlook.predicted_epochs_needed * PLAN_SAFETY)
    else:
        planned = prior_epochs
    planned = max(done + 1, min(max_epochs, planned))
    if not resize:
        return EpochPlan(
            Action.CONTINUE,
            workers,
            None,
            planned,
            guard.eta_s,
            state,
            None,
            f"{guard.detail}; static allocation of {workers} workers",
        )
    ramp_state = (
        state
        if state.ramp_start_s is not None
        else ControllerState(
            state.integral, state.last_t, max(0.0, now_s - sum(r.duration_s for r in records))
        )
    )
    decision = control_step(
        now_s=now_s,
        deadline_s=deadline_s,
        epochs_done=done,
        epochs_planned=planned,
        workers=workers,
        max_workers=max_workers,
        model=model,
        state=ramp_state,
        config=config,
    )
    action = Action.RESIZE if decision.resize else Action.CONTINUE
    return EpochPlan(
        action,
        decision.workers,
        None,
        planned,
        decision.predicted_finish_s,
        decision.state,
        decision,
        f"{outlook.detail}; plan {planned} epochs; {decision.reason}",
    )


def summarize_allocation(records: Sequence[EpochRecord]) -> Mapping[str, float]:
    """Worker-seconds spent in epochs, and the number of resizes."""
    worker_s = sum(r.workers * r.duration_s for r in records)
    resizes = sum(1 for a, b in zip(records, records[1:], strict=False) if a.workers != b.workers)
    return {"epoch_worker_seconds": worker_s, "resizes": float(resizes)}


#: A checkpoint at most this often while training goes on: persisting one costs ~1-2 s here
#: (Ray Train's report and storage), more than a small model's epoch.
CHECKPOINT_EVERY_S = 10.0


def checkpoint_due(
    *,
    now_s: float,
    last_checkpoint_s: float | None,
    action: Action | str,
    every_s: float = CHECKPOINT_EVERY_S,
) -> bool:
    """Whether this epoch ends with a checkpoint: always when training stops or resizes (the
    next segment and the export read it) and for the first epoch; otherwise once
    ``every_s`` have passed since the last one, so a failure loses at most that much."""
    if str(action) != Action.CONTINUE.value or last_checkpoint_s is None:
        return True
    return now_s - last_checkpoint_s >= every_s
