"""Canary promotion: advance a new version's traffic share, wait, or roll it back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from policies._metrics import wilson_interval

CANARY_SHARES: Final[tuple[float, ...]] = (0.1, 0.5, 1.0)


@dataclass(frozen=True)
class CanaryStats:
    requests: int
    errors: int  # 5xx answers and wrong-shaped answers
    tail_ms: float  # latency at the contract percentile
    disagreements: int = 0  # answers that differ from the old version's on the same rows

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class CanaryVerdict:
    action: Literal["wait", "advance", "rollback"]
    reason: str


def canary_verdict(
    new: CanaryStats,
    old: CanaryStats | None,
    *,
    slo_ms: float,
    min_requests: int = 50,
    max_error_rate: float = 0.01,
    max_latency_ratio: float = 1.5,
    max_disagreement: float = 0.5,
    disagreement_z: float = 2.33,
) -> CanaryVerdict:
    """Advance the canary, wait for more requests, or roll back.

    Roll back on: an error rate above ``max_error_rate`` (and above the old version's),
    a tail over the SLO and over ``max_latency_ratio`` x the old version's, or answers that
    disagree with the old version's on more than ``max_disagreement`` of the rows (a model
    answering wrongly, e.g. constant or shuffled classes). Disagreement is a sequential test:
    rolled back once the Wilson interval's lower end (``disagreement_z``, 2.33: 99% one-sided)
    is above ``max_disagreement``; a share above it whose interval still reaches below it
    waits for more requests (14 of 27 against a 0.42 allowance is not yet evidence: the
    interval is 0.31-0.72); a share at or below it passes.
    """
    if new.requests < min_requests:
        return CanaryVerdict("wait", f"{new.requests}/{min_requests} canary requests so far")
    old_err = old.error_rate if old else 0.0
    if new.error_rate > max_error_rate and new.error_rate > old_err:
        return CanaryVerdict(
            "rollback",
            f"error rate {new.error_rate:.3f} > {max_error_rate:.3f} (old {old_err:.3f})",
        )
    old_tail = old.tail_ms if old and old.requests else None
    if new.tail_ms > slo_ms and (old_tail is None or new.tail_ms > max_latency_ratio * old_tail):
        return CanaryVerdict(
            "rollback",
            f"tail {new.tail_ms:.1f} ms over the SLO {slo_ms:g} ms"
            + (f" and {new.tail_ms / old_tail:.2f}x the old version's" if old_tail else ""),
        )
    share = new.disagreements / new.requests
    if share > max_disagreement:
        low, high = wilson_interval(new.disagreements, new.requests, disagreement_z)
        said = (
            f"{new.disagreements}/{new.requests} answers differ from the serving version's "
            f"(interval {low:.2f}-{high:.2f}, allowed {max_disagreement:.2f})"
        )
        if low > max_disagreement:
            return CanaryVerdict("rollback", said)
        return CanaryVerdict("wait", f"{said}: not yet sure, more requests")
    if new.tail_ms <= slo_ms:
        latency = f"tail {new.tail_ms:.1f} ms <= SLO {slo_ms:g} ms"
    else:  # over the SLO, but the old version is as slow: the node, not the model
        latency = (
            f"tail {new.tail_ms:.1f} ms over the SLO {slo_ms:g} ms but within "
            f"{max_latency_ratio:g}x the old version's {old_tail or 0.0:.1f} ms"
        )
    return CanaryVerdict(
        "advance",
        f"{new.requests} requests: errors {new.error_rate:.3f}, "
        f"{latency}, {new.disagreements} disagreeing answers",
    )


def disagreement_bound(old_accuracy: float, new_accuracy: float, margin: float = 0.1) -> float:
    """Most answers two classifiers of these test accuracies can disagree on, (1-a)+(1-b),
    plus ``margin`` for sampling noise (at most 0.9): far more means the new one, as served,
    answers wrongly."""
    return min(0.9, (1 - old_accuracy) + (1 - new_accuracy) + margin)


def next_canary_share(current: float, shares: Sequence[float] = CANARY_SHARES) -> float:
    for s in shares:
        if s > current + 1e-9:
            return s
    return 1.0


@dataclass(frozen=True)
class CanaryPolicy:
    """The canary loop's knobs: the traffic shares it steps through, how much probe traffic a
    step sends before it must decide, and the thresholds of ``canary_verdict``."""

    shares: tuple[float, ...] = CANARY_SHARES
    probe_requests: int = 60  # test-set rows sent per probe round (plus live traffic)
    max_probe_rounds: int = 10  # rounds per step; still too few requests then: roll back
    min_requests: int = 20  # canary requests a step needs before it can decide
    max_error_rate: float = 0.01
    max_latency_ratio: float = 1.5
    disagreement_margin: float = 0.1
    disagreement_z: float = 2.33  # the sequential disagreement test's confidence (99%)
    candidate_timeout_s: float = 10.0  # a slower canary call is answered by the old version

    def __post_init__(self) -> None:
        if (
            not self.shares
            or any(not 0 < s <= 1 for s in self.shares)
            or list(self.shares) != sorted(self.shares)
            or self.shares[-1] != 1.0
        ):
            raise ValueError(
                f"canary shares must rise within (0, 1] and end at 1.0, got {self.shares}"
            )
        if self.probe_requests < 0 or self.max_probe_rounds < 1 or self.min_requests < 1:
            raise ValueError(
                "canary policy: probe_requests >= 0, max_probe_rounds >= 1 and min_requests >= 1"
            )

    def steps(self) -> tuple[float, ...]:
        """The shares the candidate serves before it takes all traffic (1.0 excluded)."""
        return tuple(s for s in self.shares if s < 1.0)


def canary_step(
    new: CanaryStats,
    old: CanaryStats | None,
    *,
    policy: CanaryPolicy,
    slo_ms: float,
    old_accuracy: float,
    new_accuracy: float,
    rounds_done: int,
) -> CanaryVerdict:
    """The verdict of one canary step after ``rounds_done`` probe rounds: ``canary_verdict``
    with the policy's thresholds, and a step that is still waiting once its rounds are spent
    rolls back (too little traffic reached the candidate to trust it)."""
    verdict = canary_verdict(
        new,
        old,
        slo_ms=slo_ms,
        min_requests=policy.min_requests,
        max_error_rate=policy.max_error_rate,
        max_latency_ratio=policy.max_latency_ratio,
        max_disagreement=disagreement_bound(old_accuracy, new_accuracy, policy.disagreement_margin),
        disagreement_z=policy.disagreement_z,
    )
    if verdict.action == "wait" and rounds_done >= policy.max_probe_rounds:
        if new.requests >= policy.min_requests:  # enough traffic, answers still in doubt
            return CanaryVerdict(
                "rollback", f"{verdict.reason}, still after {rounds_done} probe rounds"
            )
        return CanaryVerdict(
            "rollback",
            f"only {new.requests} of the {policy.min_requests} "
            f"requests a step needs reached the candidate in "
            f"{rounds_done} probe rounds",
        )
    return verdict
