"""Federated training against a quality target: hyperFL's choice of local epochs per round.

FedAvg's knob is E, the local epochs each selected client trains in a round. Few epochs waste
rounds (and network); many waste client compute and drift on non-IID data. hyperFL (Baresi,
Quattrocchi, Rasi, SEAMS 2021) picks E each round from the accuracy measured so far:

- **linear**: the target speed is ``(A* - acc) / rounds_left``; accuracy is mapped to
  cumulative local epochs by the line through the last two rounds, and
  ``E = f(acc + speed) - cumulative_epochs``;
- **quadratic**: the same map, but the accuracy wanted after the next round follows a
  reference curve through (0, 0), (R/2, 0.8 A*), (R, A*), so early rounds go fast and later
  ones save epochs;
- **static**: E fixed, the baseline.

When the budget is the network (client participations) instead of rounds, "rounds left" is
what the remaining participations buy at this round size. Pure: no Ray, no Keras; the job
measures, this decides.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from policies._training import DEADLINE_ALPHA, StopReason


class EpochStrategy(StrEnum):
    STATIC = "static"
    LINEAR = "linear"
    QUADRATIC = "quadratic"


@dataclass(frozen=True)
class RoundRecord:
    """What one round measured. Round 0 is the initial global model (no training)."""

    round: int
    local_epochs: int
    accuracy: float
    participants: int
    seconds: float = 0.0


@dataclass(frozen=True)
class FederatedBudget:
    """The round budget (R), the optional network budget and the local-epoch bounds."""

    rounds: int
    clients_per_round: int
    network_budget: int = 0  # client participations; 0 = only rounds bound
    min_local_epochs: int = 1
    max_local_epochs: int = 1024
    max_growth: float = 4.0  # E may at most quadruple from one round to the next

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.clients_per_round < 1:
            raise ValueError(f"clients_per_round must be >= 1, got {self.clients_per_round}")
        if not 1 <= self.min_local_epochs <= self.max_local_epochs:
            raise ValueError("need 1 <= min_local_epochs <= max_local_epochs")


@dataclass(frozen=True)
class RoundDecision:
    """Go on with ``local_epochs`` next round, or stop with ``stop_reason``."""

    stop: bool
    local_epochs: int
    stop_reason: StopReason | None
    rounds_left: int
    wanted_accuracy: float | None
    message: str


def participations(history: Sequence[RoundRecord]) -> int:
    return sum(r.participants for r in history)


def client_epochs(history: Sequence[RoundRecord]) -> int:
    """The compute measure: local epochs summed over every participating client."""
    return sum(r.local_epochs * r.participants for r in history)


def rounds_left(history: Sequence[RoundRecord], budget: FederatedBudget) -> int:
    done = max((r.round for r in history), default=0)
    left = budget.rounds - done
    if budget.network_budget > 0:
        left = min(
            left, (budget.network_budget - participations(history)) // budget.clients_per_round
        )
    return max(0, left)


def reference_accuracy(round_no: float, rounds: int, target: float) -> float:
    """hyperFL's quadratic reference: through (0, 0), (R/2, 0.8 A*), (R, A*)."""
    a = -1.2 * target / rounds**2
    b = 2.2 * target / rounds
    return min(target, a * round_no**2 + b * round_no)


def _epochs_for_gain(
    history: Sequence[RoundRecord], gain: float, last_e: int, budget: FederatedBudget
) -> int:
    """Local epochs to add ``gain`` accuracy, by the line through the last two rounds."""
    if gain <= 0:
        return budget.min_local_epochs
    prev, last = history[-2], history[-1]
    d_acc = last.accuracy - prev.accuracy
    if d_acc <= 1e-9:
        wanted = 2.0 * max(last_e, 1)  # no measurable progress: escalate
    else:
        slope = last.local_epochs / d_acc  # local epochs per unit of accuracy
        wanted = slope * gain
    cap = max(budget.min_local_epochs, math.floor(max(last_e, 1) * budget.max_growth))
    e = int(math.ceil(wanted - 1e-9))
    return max(budget.min_local_epochs, min(e, cap, budget.max_local_epochs))


def next_round(
    *,
    strategy: EpochStrategy | str,
    history: Sequence[RoundRecord],
    target: float,
    budget: FederatedBudget,
    static_epochs: int,
    now_s: float = 0.0,
    deadline_s: float = math.inf,
    alpha: float = DEADLINE_ALPHA,
) -> RoundDecision:
    """Decide after a round: stop (target met, rounds/network/deadline spent) or the next E.

    ``history`` starts with round 0 (the initial model's accuracy, no epochs) and holds every
    finished round in order. ``now_s`` is seconds since training started; a round whose
    expected length (the slowest so far) would end past ``alpha * deadline_s`` is not started.
    """
    strategy = EpochStrategy(strategy)
    if not history:
        raise ValueError("history needs round 0: the initial model's accuracy")
    last = history[-1]
    left = rounds_left(history, budget)
    best = max(r.accuracy for r in history)

    def stop(reason: StopReason, message: str) -> RoundDecision:
        return RoundDecision(True, 0, reason, left, None, message)

    if best >= target:
        return stop(StopReason.TARGET_MET, f"target {target:.4f} reached ({best:.4f})")
    if left <= 0:
        if budget.network_budget > 0 and last.round < budget.rounds:
            return stop(
                StopReason.BUDGET_EXHAUSTED,
                f"network budget of {budget.network_budget} participations spent "
                f"({participations(history)}); best {best:.4f} < target {target:.4f}",
            )
        return stop(
            StopReason.ROUNDS_EXHAUSTED,
            f"{budget.rounds} rounds done; best {best:.4f} < target {target:.4f}",
        )
    round_s = max((r.seconds for r in history if r.round > 0), default=0.0)
    if now_s + round_s > alpha * deadline_s:
        return stop(
            StopReason.DEADLINE_TRUNCATED,
            f"another round (~{round_s:.1f}s) would end past {alpha:.0%} of the "
            f"{deadline_s:g}s deadline",
        )
    last_e = next((r.local_epochs for r in reversed(history) if r.round > 0), static_epochs)
    if strategy is EpochStrategy.STATIC or len(history) < 2:
        e = max(budget.min_local_epochs, min(static_epochs, budget.max_local_epochs))
        return RoundDecision(
            False,
            e,
            None,
            left,
            None,
            f"{strategy.value}: E={e}"
            if strategy is EpochStrategy.STATIC
            else f"{strategy.value}: first round at E={e}",
        )
    if strategy is EpochStrategy.LINEAR:
        wanted = last.accuracy + (target - last.accuracy) / left
    else:
        total = last.round + left  # the rounds this budget allows in all
        wanted = max(reference_accuracy(last.round + 1, total, target), 0.0)
    e = _epochs_for_gain(history, wanted - last.accuracy, last_e, budget)
    return RoundDecision(
        False,
        e,
        None,
        left,
        wanted,
        f"{strategy.value}: acc {last.accuracy:.4f} -> wanted {wanted:.4f} "
        f"next round, {left} rounds left: E={e}",
    )


def select_clients(alive: Sequence[int], per_round: int, seed: int, round_no: int) -> list[int]:
    """The clients of a round: a seeded sample of the live ones (all if fewer)."""
    pool = sorted(alive)
    if len(pool) <= per_round:
        return pool
    rng = random.Random(seed * 1_000_003 + round_no)
    return sorted(rng.sample(pool, per_round))


def fedavg_coefficients(samples: Sequence[int]) -> list[float]:
    """FedAvg weights: each returning client in proportion to its training samples."""
    total = sum(samples)
    if total <= 0:
        raise ValueError("no samples among the returning clients")
    return [s / total for s in samples]
