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
    the latency SLO at the contract's percentile, the served answers as accurate as the served
    variant measured (within sampling noise), and a malformed request refused with a 4xx."""
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
    checks = (
        GateCheck(
            "latency_slo",
            tail <= slo_ms,
            f"p{percentile_q} {tail:.1f} ms {'<=' if tail <= slo_ms else '>'} SLO "
            f"{slo_ms:g} ms over {n} sequential requests (p50 {p50:.1f} ms)",
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
