"""The endpoint check after a deploy: did real requests get what the contract promised?

Shaped like the promotion gate: one check per rule with its reason, so the verify task can
record every reason on the model version and fail with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from policies._promotion import GateCheck


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class VerifyVerdict:
    checks: tuple[GateCheck, ...]
    p50_ms: float
    tail_ms: float
    served_accuracy: float

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(f"{'PASS' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "p50_ms": self.p50_ms,
            "tail_ms": self.tail_ms,
            "served_accuracy": self.served_accuracy,
        }


def accuracy_floor(expected: float, n: int, z: float = 3.0) -> float:
    """The lowest served accuracy over ``n`` requests that is still consistent with a model
    of accuracy ``expected`` (``z`` binomial standard errors below it)."""
    if n <= 0:
        return 0.0
    return max(0.0, expected - z * math.sqrt(max(expected * (1 - expected), 1e-6) / n))


def allowed_exceedances(n: int, percentile_q: float, alpha: float = 0.01) -> int:
    """Most of ``n`` requests that may take longer than the SLO while the endpoint still
    meets it at ``percentile_q``: the largest ``k`` with P(X >= k) > ``alpha`` for
    X ~ Binomial(n, 1 - q/100). More exceedances than that are evidence (at 1 - ``alpha``)
    that the tail is over the SLO; fewer are what a compliant endpoint shows by chance (at
    p99 over 200 requests, 2 slow ones are the expectation: up to 6 are allowed)."""
    p = max(0.0, min(1.0, 1.0 - percentile_q / 100.0))
    if n <= 0 or p <= 0.0:
        return 0
    tail, k = 1.0, 0  # P(X >= 0)
    while k < n:
        tail -= math.comb(n, k) * p**k * (1 - p) ** (n - k)  # now P(X >= k + 1)
        if tail <= alpha:
            return k
        k += 1
    return n


def verify_verdict(
    *,
    latencies_ms: Sequence[float],
    correct: int,
    slo_ms: float,
    percentile_q: int,
    expected_accuracy: float,
    bad_request_status: int,
    regression_rmse: tuple[float, float] | None = None,
) -> VerifyVerdict:
    """Three checks on what the endpoint did for ``len(latencies_ms)`` real requests:
    the latency SLO at the contract's percentile (failed only when more requests exceed it
    than an endpoint meeting it shows by chance: ``allowed_exceedances``), the served answers
    as accurate as the served variant measured (within sampling noise), and a malformed
    request refused with a 4xx."""
    n = len(latencies_ms)
    tail = percentile(latencies_ms, percentile_q)
    p50 = percentile(latencies_ms, 50)
    served = correct / n if n else 0.0
    floor = accuracy_floor(expected_accuracy, n)
    answers = GateCheck(
        "served_accuracy",
        served >= floor,
        f"{served:.4f} of {n} answers right; the served variant tested "
        f"{expected_accuracy:.4f}, so at least {floor:.4f} is expected",
    )
    if regression_rmse is not None:
        # Values: the served answers' RMSE on these rows, against the tested RMSE with
        # room for sampling noise (relative standard error of an RMSE ~ 1/sqrt(2n); 4 of them).
        served_rmse, expected_rmse = regression_rmse
        ceiling = expected_rmse * (1 + 4 / math.sqrt(2 * max(n, 1)))
        served = served_rmse
        answers = GateCheck(
            "served_rmse",
            served_rmse <= ceiling,
            f"RMSE {served_rmse:.4g} over {n} answers; the served model tested "
            f"{expected_rmse:.4g}, so at most {ceiling:.4g} is expected",
        )
    over = sum(1 for v in latencies_ms if v > slo_ms)
    allowed = allowed_exceedances(n, percentile_q)
    checks = (
        GateCheck(
            "latency_slo",
            over <= allowed,
            f"p{percentile_q} {tail:.1f} ms {'<=' if tail <= slo_ms else '>'} SLO "
            f"{slo_ms:g} ms over {n} sequential requests (p50 {p50:.1f} ms); {over} over the "
            f"SLO, at most {allowed} expected by chance of an endpoint that meets it",
        ),
        answers,
        GateCheck(
            "malformed_request",
            400 <= bad_request_status < 500,
            f"a malformed body got HTTP {bad_request_status}"
            + ("" if 400 <= bad_request_status < 500 else ", not a 4xx"),
        ),
    )
    return VerifyVerdict(checks, round(p50, 3), round(tail, 3), served)
