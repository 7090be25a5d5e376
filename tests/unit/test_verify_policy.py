"""The verify task's verdict: latency SLO, served accuracy, malformed request."""

from __future__ import annotations

import numpy as np
import pytest

from policies import accuracy_floor, percentile, verify_verdict

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("q", [50, 90, 95, 99])
def test_percentile_matches_numpy(q: int) -> None:
    xs = list(np.random.default_rng(q).exponential(10, size=137))
    assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_a_healthy_endpoint_passes_every_check() -> None:
    verdict = verify_verdict(
        latencies_ms=[10.0] * 199 + [40.0],
        correct=190,
        slo_ms=100.0,
        percentile_q=99,
        expected_accuracy=0.95,
        bad_request_status=400,
    )
    assert verdict.passed and len(verdict.reasons) == 3
    assert verdict.reasons[0].startswith("PASS latency_slo: p99")


def test_each_failure_is_named_with_its_numbers() -> None:
    slow = verify_verdict(
        latencies_ms=[10.0] * 180 + [500.0] * 20,
        correct=190,
        slo_ms=100.0,
        percentile_q=95,
        expected_accuracy=0.95,
        bad_request_status=400,
    )
    assert not slow.passed and slow.reasons[0].startswith("FAIL latency_slo: p95 500.0 ms > SLO")
    wrong = verify_verdict(
        latencies_ms=[10.0] * 200,
        correct=100,
        slo_ms=100.0,
        percentile_q=99,
        expected_accuracy=0.95,
        bad_request_status=400,
    )
    assert not wrong.passed and "FAIL served_accuracy: 0.5000 of 200" in wrong.reasons[1]
    lax = verify_verdict(
        latencies_ms=[10.0] * 200,
        correct=190,
        slo_ms=100.0,
        percentile_q=99,
        expected_accuracy=0.95,
        bad_request_status=500,
    )
    assert (
        not lax.passed
        and lax.reasons[2] == "FAIL malformed_request: a malformed body got HTTP 500, not a 4xx"
    )


def test_accuracy_floor_allows_sampling_noise_only() -> None:
    assert accuracy_floor(0.95, 200) == pytest.approx(0.95 - 3 * (0.95 * 0.05 / 200) ** 0.5)
    assert accuracy_floor(0.95, 200) > 0.9
    assert accuracy_floor(0.9, 0) == 0.0
