"""Spark under a deadline: dynaSpark's per-stage deadlines, cores and control loop.

dynaSpark (Baresi, Leva, Quattrocchi, TSE 2021) meets a Spark application's deadline with the
fewest cores by planning each stage from a profile and correcting while it runs:

- a **profile** gives each stage's records and nominal rate (records per second per core),
  measured from Spark itself on an earlier run;
- the application aims at ``alpha * deadline`` (alpha 0.95), the slack absorbing noise;
- when a stage starts, its weight
  ``w = beta * stages_left + (1 - beta) * (remaining_profiled_s / this_stage_s - 1)``
  splits the time left: ``stage_deadline = time_left / (w + 1)`` (beta 0.33), and its cores
  are ``ceil(overscale * records / (stage_deadline * nominal_rate))``;
- while the stage runs, a PI loop compares the fraction of its tasks done with a set point
  that ramps from 0 to 1 over the stage deadline and moves the cores (anti-windup, bounded);
- a deadline shorter than the profile's time on every core there is, is refused up front;
- concurrent applications share the cluster through an **arbiter**: proportional to what
  each asks for, or earliest deadline first.

Pure: numbers in, numbers out. The Spark job measures and actuates (executors on a standalone
master); this decides. Time is passed in, so the whole loop runs in a simulator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

#: The application aims at this fraction of its deadline.
SPARK_ALPHA = 0.95
#: Weight of "stages left" against "profiled time left" in a stage's share of the time.
BETA = 0.33
#: Cores are planned this much above the nominal need (tasks are not perfectly divisible).
OVERSCALE = 1.1


@dataclass(frozen=True)
class StageProfile:
    """One stage as profiled: ``records`` processed at ``nominal_rate`` records/s per core."""

    name: str
    records: int
    nominal_rate: float
    tasks: int = 1
    overhead_s: float = 0.0  # fixed per-stage cost (scheduling, shuffle set-up)

    def __post_init__(self) -> None:
        if self.records < 0:
            raise ValueError(f"stage {self.name!r}: records must be >= 0, got {self.records}")
        if not self.nominal_rate > 0:
            raise ValueError(
                f"stage {self.name!r}: nominal_rate must be > 0 records/s per "
                f"core, got {self.nominal_rate}"
            )
        if self.tasks < 1:
            raise ValueError(f"stage {self.name!r}: tasks must be >= 1, got {self.tasks}")

    def seconds(self, cores: float) -> float:
        """Time on ``cores`` cores; a stage cannot use more cores than it has tasks."""
        usable = max(min(cores, float(self.tasks)), 1e-9)
        return self.overhead_s + self.records / (self.nominal_rate * usable)

    @property
    def core_seconds(self) -> float:
        """Profiled work: time on one core, without the overhead."""
        return self.records / self.nominal_rate


def stage_weight(
    stages_left: int, remaining_profiled_s: float, stage_profiled_s: float, beta: float = BETA
) -> float:
    """dynaSpark's weight of the stages after this one against this stage.

    ``stages_left`` counts the stages after this one; the times are one-core profiled times,
    ``remaining_profiled_s`` including this stage.
    """
    if stage_profiled_s <= 0:
        return float(stages_left)
    return beta * stages_left + (1 - beta) * (remaining_profiled_s / stage_profiled_s - 1)


def stage_deadline(time_left_s: float, weight: float) -> float:
    """The part of the time left that this stage may use."""
    return max(0.0, time_left_s) / (max(weight, 0.0) + 1)


def cores_for(
    stage: StageProfile, deadline_s: float, max_cores: int, overscale: float = OVERSCALE
) -> int:
    """Cores for ``stage`` to finish in ``deadline_s``, within 1..min(max_cores, tasks)."""
    cap = max(1, min(max_cores, stage.tasks))
    work_s = deadline_s - stage.overhead_s
    if work_s <= 0:
        return cap
    return max(1, min(cap, math.ceil(overscale * stage.core_seconds / work_s - 1e-9)))


@dataclass(frozen=True)
class StagePlan:
    name: str
    deadline_s: float  # seconds from the stage's start
    cores: int


@dataclass(frozen=True)
class SparkFeasibility:
    feasible: bool
    min_seconds: float  # every stage on all the cores it can use
    budget_s: float  # alpha * deadline
    binding: str | None
    message: str

    def to_dict(self) -> dict[str, object]:
        return {
            "feasible": self.feasible,
            "min_seconds": round(self.min_seconds, 3),
            "budget_s": round(self.budget_s, 3),
            "binding": self.binding,
            "message": self.message,
        }


def assess_spark_deadline(
    stages: Sequence[StageProfile], deadline_s: float, max_cores: int, alpha: float = SPARK_ALPHA
) -> SparkFeasibility:
    """Can the profiled application finish within ``alpha * deadline_s`` on ``max_cores``?"""
    if max_cores < 1:
        raise ValueError(f"max_cores must be >= 1, got {max_cores}")
    budget = alpha * deadline_s
    fastest = sum(s.seconds(max_cores) for s in stages)
    if deadline_s <= 0:
        return SparkFeasibility(
            False,
            fastest,
            budget,
            "deadline",
            f"the deadline is {deadline_s:g}s: set a deadline in the future",
        )
    if fastest <= budget:
        return SparkFeasibility(
            True,
            fastest,
            budget,
            None,
            f"feasible: {fastest:.1f}s on {max_cores} cores within "
            f"{budget:.1f}s ({alpha:.0%} of {deadline_s:g}s)",
        )
    # Would more cores help? Only if some stage has more tasks than cores.
    unbounded = sum(s.seconds(s.tasks) for s in stages)
    if unbounded > budget:
        binding = "deadline"
        fix = (
            f"even with a core per task it takes {unbounded:.1f}s: relax the deadline to "
            f"at least {_up(unbounded / alpha)}s"
        )
    else:
        need = _min_cores_for(stages, budget)
        binding = "cores"
        fix = (
            f"needs {need} cores, the cluster gives {max_cores}: add cores or relax the "
            f"deadline to at least {_up(fastest / alpha)}s"
        )
    return SparkFeasibility(
        False,
        fastest,
        budget,
        binding,
        f"infeasible: the profile needs {fastest:.1f}s on {max_cores} "
        f"cores, more than {budget:.1f}s ({alpha:.0%} of "
        f"{deadline_s:g}s); {fix}",
    )


def _up(seconds: float) -> str:
    """Seconds rounded *up* to 0.1 s: advice rounded down would still be infeasible."""
    return f"{math.ceil(seconds * 10 - 1e-9) / 10:.1f}"


def _min_cores_for(stages: Sequence[StageProfile], budget_s: float) -> int:
    top = max(s.tasks for s in stages)
    for n in range(1, top + 1):
        if sum(s.seconds(n) for s in stages) <= budget_s:
            return n
    return top


def plan_stage(
    stages: Sequence[StageProfile],
    index: int,
    now_s: float,
    deadline_s: float,
    max_cores: int,
    *,
    alpha: float = SPARK_ALPHA,
    beta: float = BETA,
    overscale: float = OVERSCALE,
) -> StagePlan:
    """When stage ``index`` starts at ``now_s`` (seconds since submit): its deadline and cores."""
    stage = stages[index]
    remaining = sum(s.core_seconds for s in stages[index:])
    w = stage_weight(len(stages) - index - 1, remaining, stage.core_seconds, beta)
    # Fixed costs of later stages are not shareable: take them off the time first.
    later_overhead = sum(s.overhead_s for s in stages[index + 1 :])
    dl = stage_deadline(alpha * deadline_s - now_s - later_overhead, w)
    return StagePlan(stage.name, dl, cores_for(stage, dl, max_cores, overscale))


@dataclass
class StageController:
    """dynaSpark's PI loop for one running stage, called every ``period_s``.

    The set point ramps from 0 to 1 over the stage deadline (ending a little early, at
    ``lead``); the error ``e`` is set point minus the fraction of tasks done.
    ``cores = planned + G*e + G/Ti * integral(e)`` with the gain ``G = k * planned``
    (dynaSpark's K and Ti, scaled to the stage); the integral stops while the output is
    saturated (anti-windup); the output moves in steps of ``quantum`` cores within
    ``[min_cores, max_cores]``. The caller rounds up to whole executors.
    """

    planned_cores: float
    deadline_s: float
    max_cores: float
    min_cores: float = 1.0
    k: float = 4.0
    ti_s: float = 12.0
    quantum: float = 0.05
    lead: float = 0.95
    integral: float = field(default=0.0, init=False)
    cores: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")
        if not 0 < self.min_cores <= self.max_cores:
            raise ValueError("need 0 < min_cores <= max_cores")
        self.cores = min(max(self.planned_cores, self.min_cores), self.max_cores)

    def set_point(self, elapsed_s: float) -> float:
        """Planned fraction done; the ramp ends at ``lead`` of the deadline, since a PI loop
        tracking a ramp lags it."""
        return min(1.0, max(0.0, elapsed_s / (self.lead * self.deadline_s)))

    def update(self, elapsed_s: float, done_fraction: float, period_s: float) -> float:
        """New cores after ``elapsed_s`` in the stage with ``done_fraction`` of tasks done."""
        done = min(1.0, max(0.0, done_fraction))
        e = self.set_point(elapsed_s) - done
        if elapsed_s >= self.deadline_s and done < 1.0:
            e = max(e, 1.0 - done)  # late: push until done
        gain = self.k * self.planned_cores  # gains scale with the stage's size
        integral = self.integral + gain * e * period_s / self.ti_s
        raw = self.planned_cores + gain * e + integral
        lo, hi = self.min_cores, self.max_cores
        # Anti-windup: the integral moves only while that does not push further into a limit.
        if not ((raw > hi and integral > self.integral) or (raw < lo and integral < self.integral)):
            self.integral = integral
        raw = self.planned_cores + gain * e + self.integral
        self.cores = min(hi, max(lo, round(raw / self.quantum) * self.quantum))
        return self.cores


class ArbiterPolicy(StrEnum):
    PROPORTIONAL = "proportional"
    EDF = "edf"


def arbitrate(
    demands: Mapping[str, float],
    deadlines: Mapping[str, float],
    capacity: float,
    policy: ArbiterPolicy | str = ArbiterPolicy.PROPORTIONAL,
) -> dict[str, float]:
    """Split ``capacity`` cores between applications asking ``demands``.

    Everyone gets what it asks when it fits. Otherwise *proportional* scales every demand by
    the same factor; *edf* serves applications by earliest deadline, the last ones getting
    what is left (possibly nothing).
    """
    policy = ArbiterPolicy(policy)
    total = sum(max(0.0, d) for d in demands.values())
    if total <= capacity:
        return {a: max(0.0, d) for a, d in demands.items()}
    if policy is ArbiterPolicy.PROPORTIONAL:
        f = capacity / total
        return {a: max(0.0, d) * f for a, d in demands.items()}
    left = capacity
    out: dict[str, float] = {}
    for app in sorted(demands, key=lambda a: (deadlines.get(a, math.inf), a)):
        give = min(max(0.0, demands[app]), left)
        out[app] = give
        left -= give
    return out
