"""Deadline controller: how many workers the next training segment gets.

In the spirit of dynaSpark: a set point of planned progress ramps from 0 (when training
proper starts) to 1 at ``DEADLINE_ALPHA * deadline``; measured progress is epochs done over
epochs planned. A PI term on the error corrects the feed-forward (the epoch time needed to
finish the remaining epochs in the remaining time), with anti-windup. The worker count chosen
is the one with the fewest worker-seconds that still finishes in time, counting the restart a
resize costs; a resize must save at least ``min_saving`` of the worker-seconds to happen.
The state is a small frozen dataclass, saved with the checkpoint, so a resumed job continues
the same loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from policies._feasibility import ThroughputModel
from policies._training import DEADLINE_ALPHA


@dataclass(frozen=True)
class ControllerConfig:
    kp: float = 1.0
    ki: float = 0.02  # per second
    integral_limit: float = 0.5
    u_min: float = -0.3  # how far the correction may relax the required speed
    u_max: float = 1.0  # how far it may raise it
    min_saving: float = 0.15  # a resize must save this share of worker-seconds
    downsize_margin: float = 0.1  # a smaller count must fit with epochs this much slower


DEFAULT_CONFIG = ControllerConfig()


@dataclass(frozen=True)
class ControllerState:
    integral: float = 0.0
    last_t: float | None = None
    ramp_start_s: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {"integral": self.integral, "last_t": self.last_t, "ramp_start_s": self.ramp_start_s}

    @classmethod
    def from_dict(cls, raw: dict[str, float | None] | None) -> ControllerState:
        if not raw:
            return cls()
        integral = raw.get("integral")
        return cls(
            integral=float(integral or 0.0),
            last_t=raw.get("last_t"),
            ramp_start_s=raw.get("ramp_start_s"),
        )


@dataclass(frozen=True)
class ControlDecision:
    workers: int
    resize: bool
    setpoint: float
    progress: float
    error: float
    correction: float
    required_epoch_s: float
    predicted_finish_s: float
    state: ControllerState
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {
            "workers": self.workers,
            "resize": self.resize,
            "setpoint": round(self.setpoint, 4),
            "progress": round(self.progress, 4),
            "error": round(self.error, 4),
            "correction": round(self.correction, 4),
            "required_epoch_s": round(self.required_epoch_s, 3)
            if math.isfinite(self.required_epoch_s)
            else None,
            "predicted_finish_s": round(self.predicted_finish_s, 2)
            if math.isfinite(self.predicted_finish_s)
            else None,
            "reason": self.reason,
        }


def setpoint(now_s: float, ramp_start_s: float, deadline_s: float) -> float:
    """Planned progress fraction at ``now_s``: 0 at ramp start, 1 at alpha * deadline."""
    end = DEADLINE_ALPHA * deadline_s
    if end <= ramp_start_s:
        return 1.0
    return min(1.0, max(0.0, (now_s - ramp_start_s) / (end - ramp_start_s)))


def control_step(
    *,
    now_s: float,
    deadline_s: float,
    epochs_done: int,
    epochs_planned: float,
    workers: int,
    max_workers: int,
    model: ThroughputModel,
    state: ControllerState,
    config: ControllerConfig = DEFAULT_CONFIG,
) -> ControlDecision:
    """One step of the loop, taken after an epoch ends (time passed in, seconds since start).

    ``max_workers`` is what the budget and the cluster allow now; ``model`` should already
    hold this run's measured epoch times.
    """
    if max_workers < 1 or workers < 1:
        raise ValueError(f"workers ({workers}) and max_workers ({max_workers}) must be >= 1")
    ramp_start = state.ramp_start_s if state.ramp_start_s is not None else now_s
    planned = max(float(epochs_planned), float(epochs_done), 1e-9)
    progress = min(1.0, epochs_done / planned)
    sp = setpoint(now_s, ramp_start, deadline_s)
    error = sp - progress
    dt = 0.0 if state.last_t is None else max(0.0, now_s - state.last_t)
    remaining_epochs = max(0.0, planned - epochs_done)
    remaining_s = DEADLINE_ALPHA * deadline_s - now_s

    if remaining_epochs <= 0:
        new_state = replace(state, last_t=now_s, ramp_start_s=ramp_start)
        return ControlDecision(
            workers,
            False,
            sp,
            progress,
            error,
            0.0,
            math.inf,
            now_s,
            new_state,
            "planned epochs done: keep the workers",
        )

    integral = state.integral
    u = config.kp * error + integral
    u = min(config.u_max, max(config.u_min, u))
    needed = remaining_s / remaining_epochs / (1.0 + u) if remaining_s > 0 else 0.0
    top = max(max_workers, 1)

    def finish(n: int, margin: float = 0.0) -> float:
        restart = model.startup_s if n != workers else 0.0
        return now_s + restart + remaining_epochs * model.epoch_seconds(n) * (1.0 + margin)

    def cost(n: int) -> float:
        restart = model.startup_s if n != workers else 0.0
        return n * (restart + remaining_epochs * model.epoch_seconds(n))

    # The correction may tighten the finish line (behind the set point) or relax the pace it
    # asks for, but never moves the finish past alpha * deadline.
    limit = min(DEADLINE_ALPHA * deadline_s, now_s + max(remaining_s, 0.0) / (1.0 + u))
    candidates = [
        n
        for n in range(1, top + 1)
        if finish(n, config.downsize_margin if n < workers else 0.0) <= limit
    ]
    saturated = False
    if not candidates:
        # Behind whatever we do: the fastest option (the current count if no resize is faster).
        choice = min(range(1, top + 1), key=lambda n: (finish(n), n))
        saturated = True
        reason = (
            f"behind: even the fastest option ends at {finish(choice):.0f}s > "
            f"{limit:.0f}s; {choice} workers"
        )
    else:
        cheapest = min(candidates, key=lambda n: (cost(n), n))
        if (
            workers in candidates
            and workers <= top
            and (cheapest == workers or cost(cheapest) > (1 - config.min_saving) * cost(workers))
        ):
            choice = workers
            reason = f"on plan: {workers} workers end at {finish(workers):.0f}s <= {limit:.0f}s"
        else:
            choice = cheapest
            why = "too slow" if workers not in candidates or workers > top else "wasteful"
            reason = (
                f"{workers} workers {why}; {choice} end at {finish(choice):.0f}s <= "
                f"{limit:.0f}s with {cost(choice):.0f} worker-s (restart "
                f"{model.startup_s:.0f}s counted)"
            )
        saturated = choice in (1, top) and (
            (choice == top and error > 0) or (choice == 1 and error < 0)
        )
    # Anti-windup: integrate only while the actuator is not pinned against the error.
    if not saturated:
        integral = min(
            config.integral_limit, max(-config.integral_limit, integral + config.ki * error * dt)
        )
    new_state = ControllerState(integral=integral, last_t=now_s, ramp_start_s=ramp_start)
    return ControlDecision(
        choice, choice != workers, sp, progress, error, u, needed, finish(choice), new_state, reason
    )
