"""Feasibility: can this contract be met on this cluster, said before any training compute?

Inputs are a throughput model per resource shape (seconds per epoch for each worker count, and
the fixed cost of a (re)start, measured on the target cluster by a calibration job or taken
from past runs), an estimate of the epochs needed (``policies._accuracy``), the cluster's free
capacity and the contract's budget. The answer names the binding constraint and the numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from policies._accuracy import EpochEstimate
from policies._training import DEADLINE_ALPHA

#: Serial fraction assumed when only one worker count was measured (Amdahl's law).
DEFAULT_SERIAL_FRACTION = 0.3


@dataclass(frozen=True)
class ThroughputModel:
    """Seconds per epoch by worker count for one resource shape (e.g. ``cpu`` or ``gpu``).

    Unmeasured worker counts are interpolated with Amdahl's law fitted to the measured ones.
    ``price_per_worker_s`` makes shapes comparable (e.g. CPUs per worker, or a GPU price).
    """

    shape: str
    epoch_s: Mapping[int, float]
    startup_s: float
    price_per_worker_s: float = 1.0
    source: str = ""

    def __post_init__(self) -> None:
        if not self.epoch_s:
            raise ValueError("a throughput model needs at least one measured worker count")
        if any(n < 1 or t <= 0 for n, t in self.epoch_s.items()):
            raise ValueError(f"bad throughput table {dict(self.epoch_s)}")

    def serial_fraction(self) -> float:
        pts = sorted(self.epoch_s.items())
        if len(pts) < 2:
            return DEFAULT_SERIAL_FRACTION
        # t(n) = t1 * (s + (1 - s) / n): least squares for (t1*s, t1*(1-s)) on x = 1/n.
        xs = [1.0 / n for n, _ in pts]
        ys = [t for _, t in pts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        intercept = my - slope * mx
        total = slope + intercept
        if total <= 0:
            return 1.0
        return min(1.0, max(0.0, intercept / total))

    def epoch_seconds(self, n: int) -> float:
        if n in self.epoch_s:
            return float(self.epoch_s[n])
        s = self.serial_fraction()
        ref_n, ref_t = min(self.epoch_s.items(), key=lambda kv: abs(kv[0] - n))
        t1 = ref_t / (s + (1 - s) / ref_n)
        return t1 * (s + (1 - s) / n)

    def with_measurement(self, n: int, epoch_s: float, weight: float = 0.5) -> ThroughputModel:
        """Blend a new measurement for ``n`` workers into the table (EWMA)."""
        old = self.epoch_s.get(n)
        new = epoch_s if old is None else (1 - weight) * old + weight * epoch_s
        return ThroughputModel(
            self.shape,
            {**self.epoch_s, n: new},
            self.startup_s,
            self.price_per_worker_s,
            self.source,
        )


class Verdict(StrEnum):
    FEASIBLE = "feasible"
    AT_RISK = "at_risk"  # feasible only if training needs fewer epochs than planned
    INFEASIBLE = "infeasible"


@dataclass(frozen=True)
class Feasibility:
    verdict: Verdict
    binding: str  # "none" | "deadline" | "cluster" | "budget" | "target"
    shape: str
    workers: int  # fewest workers that meet the plan (or the most usable, when none does)
    predicted_training_s: float
    deadline_s: float
    earliest_finish_s: float  # with the most usable workers, from now
    epochs: int
    message: str
    suggestions: tuple[str, ...] = field(default=())

    @property
    def feasible(self) -> bool:
        return self.verdict is not Verdict.INFEASIBLE

    def to_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict.value,
            "feasible": self.feasible,
            "binding": self.binding,
            "shape": self.shape,
            "workers": self.workers,
            "predicted_training_s": round(self.predicted_training_s, 2),
            "deadline_s": self.deadline_s,
            "earliest_finish_s": round(self.earliest_finish_s, 2),
            "epochs": self.epochs,
            "message": self.message,
            "suggestions": list(self.suggestions),
        }


def _clock(now_unix: float | None, offset_s: float) -> str:
    if now_unix is None or not math.isfinite(offset_s):
        return f"+{offset_s:.0f}s"
    return time.strftime("%H:%M:%S UTC", time.gmtime(now_unix + offset_s))


def time_for(model: ThroughputModel, n: int, epochs: float) -> float:
    """Wall-clock seconds of a fresh start with ``n`` workers that trains ``epochs`` epochs."""
    return model.startup_s + epochs * model.epoch_seconds(n)


def fewest_workers(
    model: ThroughputModel, epochs: float, budget_s: float, max_workers: int
) -> int | None:
    """Smallest worker count whose predicted time fits ``budget_s`` (None if none does)."""
    for n in range(1, max_workers + 1):
        if time_for(model, n, epochs) <= budget_s:
            return n
    return None


#: Starting size is planned for this many times the estimated epochs when that still fits:
#: growing later costs a restart, which short jobs cannot afford.
START_MARGIN = 1.15


def starting_workers(
    model: ThroughputModel, epochs: float, budget_s: float, max_workers: int
) -> int | None:
    """Fewest workers for ``epochs`` x START_MARGIN, else for ``epochs`` (None: none fits)."""
    return fewest_workers(model, epochs * START_MARGIN, budget_s, max_workers) or fewest_workers(
        model, epochs, budget_s, max_workers
    )


def assess_feasibility(
    *,
    deadline_s: float,
    elapsed_s: float,
    max_workers: int,
    capacity: Mapping[str, int],
    models: Sequence[ThroughputModel],
    estimate: EpochEstimate,
    now_unix: float | None = None,
) -> Feasibility:
    """Verdict for training ``estimate.epochs`` epochs by the deadline.

    ``capacity`` is how many workers of each shape the cluster's free resources hold now;
    ``max_workers`` is the contract's budget. The plan is the shape and worker count with the
    lowest price (worker-seconds x price) that ends within ``DEADLINE_ALPHA`` of the time left.
    """
    if not models:
        raise ValueError("no throughput model: calibrate the cluster first")
    remaining = deadline_s - elapsed_s
    budget = DEADLINE_ALPHA * remaining
    cpu = next((m for m in models if m.shape == "cpu"), models[0])
    if remaining <= 0:
        return Feasibility(
            Verdict.INFEASIBLE,
            "deadline",
            cpu.shape,
            0,
            math.inf,
            deadline_s,
            math.inf,
            estimate.epochs,
            f"the deadline passed {-remaining:.0f}s ago: nothing can be trained",
            ("trigger a new run with a new deadline",),
        )
    if not estimate.reachable:
        return Feasibility(
            Verdict.INFEASIBLE,
            "target",
            cpu.shape,
            0,
            math.inf,
            deadline_s,
            math.inf,
            estimate.epochs,
            f"target out of reach: {estimate.source}",
            ("relax target_value", "change the model (hidden_units, learning_rate) or the data"),
        )
    usable = {m.shape: min(max_workers, capacity.get(m.shape, 0)) for m in models}
    if all(u < 1 for u in usable.values()):
        return Feasibility(
            Verdict.INFEASIBLE,
            "cluster",
            cpu.shape,
            0,
            math.inf,
            deadline_s,
            math.inf,
            estimate.epochs,
            "the cluster has no free room for one training worker",
            ("free the Ray cluster or add nodes", "lower cpus_per_worker"),
        )

    def best_plan(epochs: float) -> tuple[ThroughputModel, int, float] | None:
        plans = []
        for m in models:
            n = starting_workers(m, epochs, budget, usable[m.shape])
            if n is not None:
                t = time_for(m, n, epochs)
                plans.append((n * (t - m.startup_s) * m.price_per_worker_s, t, m, n))
        if not plans:
            return None
        _, t, m, n = min(plans, key=lambda p: (p[0], p[1]))
        return m, n, t

    fastest = min(
        ((m, usable[m.shape]) for m in models if usable[m.shape] >= 1),
        key=lambda mn: time_for(mn[0], mn[1], estimate.epochs),
    )
    earliest = time_for(fastest[0], fastest[1], estimate.epochs)
    plan = best_plan(estimate.epochs)
    if plan is not None:
        m, n, t = plan
        return Feasibility(
            Verdict.FEASIBLE,
            "none",
            m.shape,
            n,
            t,
            deadline_s,
            earliest,
            estimate.epochs,
            f"feasible: {estimate.epochs} epochs ({estimate.source}) take ~{t:.0f}s on {n} "
            f"{m.shape} worker(s) (fewest that fit {DEADLINE_ALPHA:.0%} of the {remaining:.0f}s "
            f"left); {max(budget - t, 0):.0f}s slack",
        )

    # Not feasible for the planned epochs: find what binds.
    unbounded = {m.shape: fewest_workers(m, estimate.epochs, budget, 4096) for m in models}
    need = min((n for n in unbounded.values() if n is not None), default=None)
    cap_total = max(capacity.get(m.shape, 0) for m in models)
    relax_by = earliest / DEADLINE_ALPHA - remaining
    suggestions = [
        f"relax deadline_s by {math.ceil(relax_by)}s (to {math.ceil(deadline_s + relax_by)}s)",
        "relax target_value",
    ]
    if need is not None and need > max_workers:
        binding = "budget"
        head = f"needs {need} workers, max_workers is {max_workers}"
        if need <= cap_total:
            suggestions.insert(0, f"raise max_workers to {need}")
    elif need is not None:
        binding = "cluster"
        head = f"needs {need} workers, the cluster has room for {cap_total}"
        suggestions.insert(0, f"add nodes so that {need} workers fit")
    else:
        binding = "deadline"
        head = "no worker count fits: start-up plus per-epoch time alone exceed the deadline"
    message = (
        f"{head}; {estimate.epochs} epochs ({estimate.source}) finish at the earliest "
        f"at {_clock(now_unix, earliest)} ({earliest:.0f}s from now on "
        f"{fastest[1]} {fastest[0].shape} workers), the deadline allows "
        f"{budget:.0f}s"
    )
    # Certainly infeasible only if even the epochs surely needed do not fit.
    if estimate.min_epochs < estimate.epochs:
        sure = best_plan(estimate.min_epochs)
        if sure is not None:
            m, n, t = sure
            affordable = int((budget - m.startup_s) / m.epoch_seconds(usable[m.shape]))
            return Feasibility(
                Verdict.AT_RISK,
                binding,
                m.shape,
                usable[m.shape],
                t,
                deadline_s,
                earliest,
                estimate.epochs,
                f"at risk: {message}; the deadline affords ~{affordable} epochs on "
                f"{usable[m.shape]} workers, so training ends when the target is met or the "
                f"deadline comes, whichever is first",
                tuple(suggestions),
            )
    return Feasibility(
        Verdict.INFEASIBLE,
        binding,
        fastest[0].shape,
        fastest[1],
        earliest,
        deadline_s,
        earliest,
        estimate.epochs,
        f"infeasible: {message}",
        tuple(suggestions),
    )


def next_calibration(
    model: ThroughputModel | None,
    *,
    epochs: float,
    deadline_s: float,
    max_workers: int,
    capacity: int,
) -> list[int]:
    """Worker counts still to measure before the verdict: one worker first (the cheapest
    measurement, and the whole answer whenever one worker finishes in time, since no plan
    uses fewer); the larger counts only when it does not."""
    from policies._training import calibration_worker_counts

    wanted = calibration_worker_counts(max_workers, capacity)
    if not wanted:
        return []
    if model is None or 1 not in model.epoch_s:
        return [1]
    budget = DEADLINE_ALPHA * deadline_s
    if time_for(model, 1, epochs * START_MARGIN) <= budget or model.startup_s >= budget:
        return []  # one worker fits; or not even the start-up does, whatever the count
    return [n for n in wanted if n not in model.epoch_s]
