"""Ray Serve's custom autoscaling hook, driving ``policies.autoscale`` (the ROMA controller).

Serve's controller instantiates ``SloAutoscalingPolicy(**policy_kwargs)`` once per deployment
and calls it every control period with an ``AutoscalingContext``. The replicas report
``arrival_rps`` and ``tail_ms`` of their last 10 s (``ModelServer.record_autoscaling_stats``);
the context adds requests ongoing + queued. The pure policy decides; this adapter only reads
the context and keeps the policy's state in Serve's ``policy_state``.
"""

from __future__ import annotations

import time
from typing import Any

from policies import AutoscalerConfig, LoadSample, autoscale

POLICY_PATH = "ray_jobs.serve_policy:SloAutoscalingPolicy"


class SloAutoscalingPolicy:
    def __init__(self, **config: Any) -> None:
        self.config = AutoscalerConfig.from_dict(config)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        metrics = ctx.aggregated_metrics or {}
        rates = metrics.get("arrival_rps", {})
        tails = metrics.get("tail_ms", {})
        tail = max((v for v in tails.values() if v > 0), default=None)
        sample = LoadSample(
            now_s=ctx.current_time if ctx.current_time is not None else time.time(),
            current_replicas=int(ctx.current_num_replicas),
            arrival_rps=float(sum(rates.values())),
            in_system=float(ctx.total_num_requests or 0.0),
            tail_latency_ms=tail,
        )
        state = dict(ctx.policy_state.get("slaflow", {}))
        decision = autoscale(self.config, sample, state)
        return decision.replicas, {"slaflow": decision.state, "reason": decision.reason}


def autoscaling_config(
    config: AutoscalerConfig, initial_replicas: int | None = None
) -> dict[str, Any]:
    """Serve ``autoscaling_config`` for a deployment driven by ``SloAutoscalingPolicy``.

    Serve applies its own delays on top of a custom policy's answer; the policy already
    debounces scale-down, so Serve's delays are set to act at once.
    """
    return {
        "min_replicas": config.min_replicas,
        "max_replicas": config.max_replicas,
        "initial_replicas": initial_replicas
        if initial_replicas is not None
        else max(1, config.min_replicas),
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 0.0,
        "downscale_to_zero_delay_s": 0.0,
        "metrics_interval_s": 1.0,
        "look_back_period_s": 5.0,
        "policy": {"policy_function": POLICY_PATH, "policy_kwargs": config.to_dict()},
    }
