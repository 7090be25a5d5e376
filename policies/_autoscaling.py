"""The SLO autoscaler (ROMA's response-time controller) as a pure function.

Replicas from the arrival rate and the profiled capacity, corrected by the queue length against
Little's law (SLO x arrival rate) and by the measured tail latency against the SLO; up at once,
down only after a sustained quiet period, to zero only when the plan allows it. Serve's custom
autoscaling hook (``ray_jobs/serve_policy.py``) wraps it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class AutoscalerConfig:
    slo_ms: float
    percentile: int
    capacity_rps: float  # profiled saturated throughput of one replica
    min_replicas: int
    max_replicas: int
    target_utilisation: float = 0.6  # of capacity, at the arrival rate
    latency_margin: float = 0.5  # ROMA's a: act once latency passes SLO*(1-a)
    downscale_delay_s: float = 20.0
    downscale_to_zero_delay_s: float = 60.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AutoscalerConfig:
        return cls(**d)


@dataclass(frozen=True)
class LoadSample:
    now_s: float
    current_replicas: int
    arrival_rps: float  # measured over the last window
    in_system: float  # requests ongoing + queued, all replicas
    tail_latency_ms: float | None = None  # measured percentile over the window, if any


@dataclass(frozen=True)
class ScaleDecision:
    replicas: int
    reason: str
    state: dict[str, Any] = field(default_factory=dict)


def autoscale(
    config: AutoscalerConfig, sample: LoadSample, state: Mapping[str, Any] | None = None
) -> ScaleDecision:
    """Replicas for the next period.

    Three estimates, the largest wins: the arrival rate over the profiled capacity at the
    target utilisation; the queue against Little's law (``in_system`` above
    ``arrival x SLO`` means requests wait longer than the SLO: scale in proportion); the
    measured tail latency against ``SLO x (1-a)`` (ROMA's need term). Up at once; down only
    after ``downscale_delay_s`` of wanting fewer; to zero only after
    ``downscale_to_zero_delay_s`` with no traffic, and only when ``min_replicas`` is 0.
    """
    st = dict(state or {})
    cur = max(0, sample.current_replicas)
    slo_s = config.slo_ms / 1000.0
    rate_n = (
        math.ceil(sample.arrival_rps / (config.capacity_rps * config.target_utilisation) - 1e-9)
        if sample.arrival_rps > 0
        else 0
    )
    littles = sample.arrival_rps * slo_s
    queue_n = 0
    if sample.in_system > max(littles, 1.0) and cur > 0:
        queue_n = math.ceil(cur * sample.in_system / max(littles, 1.0))
    lat_n = 0
    threshold = config.slo_ms * (1 - config.latency_margin)
    if sample.tail_latency_ms is not None and sample.tail_latency_ms > threshold and cur > 0:
        need = (sample.tail_latency_ms - threshold) / config.slo_ms
        lat_n = cur + max(1, math.ceil(cur * need))
    want = max(rate_n, queue_n, lat_n)
    if sample.in_system > 0 or sample.arrival_rps > 0:
        want = max(want, 1)
    want = max(config.min_replicas, min(config.max_replicas, want))
    why = (
        f"rate {sample.arrival_rps:.1f}/s -> {rate_n}, queue {sample.in_system:.0f} vs "
        f"{littles:.1f} -> {queue_n}, p{config.percentile} "
        f"{'-' if sample.tail_latency_ms is None else f'{sample.tail_latency_ms:.1f}'} ms "
        f"-> {lat_n}"
    )
    if want >= cur:
        st.pop("below_since", None)
        if want == 0:
            return ScaleDecision(0, f"idle at zero ({why})", st)
        return ScaleDecision(want, f"{'up' if want > cur else 'hold'} {cur}->{want} ({why})", st)
    since = float(st.setdefault("below_since", sample.now_s))
    delay = config.downscale_to_zero_delay_s if want == 0 else config.downscale_delay_s
    if sample.now_s - since < delay:
        return ScaleDecision(
            cur,
            f"hold {cur} (wants {want} for {sample.now_s - since:.0f}/{delay:.0f} s; {why})",
            st,
        )
    st.pop("below_since", None)
    # step down gradually: at most half the surplus per period, never below what is wanted
    step = want if want == 0 else max(want, cur - max(1, (cur - want + 1) // 2))
    return ScaleDecision(step, f"down {cur}->{step} ({why})", st)
