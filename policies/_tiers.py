"""How a model version's tiers run on Ray Serve: the warm tier as the placement plans it, a
batch tier for large inputs and, where scale-to-zero is allowed, an elastic tier.

``serving_layout`` is the decision (which tiers, which replicas, what idles at zero);
``ray_jobs/serve_app.py`` only maps each ``TierSettings`` to Serve options.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Final

from policies._autoscaling import AutoscalerConfig
from policies._placement import TIER_SCALE_TO_ZERO, PlacementPlan, PriceTable
from policies._routing import ROUTE_BATCH, ROUTE_ELASTIC, ROUTE_WARM

if TYPE_CHECKING:
    from policies._contract import RunContract

#: The tier name of a plan made without a serving profile (a version registered by hand).
TIER_FIXED: Final = "fixed"
#: The batch tier takes rare large inputs: one small replica, large batches.
BATCH_TIER_MAX_CPUS: Final = 0.25
BATCH_TIER_MAX_ONGOING: Final = 8
BATCH_TIER_MAX_QUEUED: Final = 64
BATCH_TIER_MAX_BATCH: Final = 1024
BATCH_TIER_WAIT_S: Final = 0.005
#: Replica shape of a version served without a profile.
FIXED_REPLICA_CPUS: Final = 0.5


@dataclass(frozen=True)
class TierSettings:
    """One tier of one version: its replica shape, queue bounds, batching and replica count
    (``replicas`` fixed, or ``autoscaler`` bounds with ``initial_replicas``)."""

    route: str
    num_cpus: float
    num_gpus: float
    resource: str
    max_ongoing_requests: int
    max_queued_requests: int
    max_batch_size: int
    batch_wait_timeout_s: float
    initial_replicas: int
    replicas: int | None = None
    autoscaler: AutoscalerConfig | None = None
    reason: str = ""
    #: ``slo``: the SLO autoscaler decides within ``autoscaler``'s bounds; ``serve_default``:
    #: Ray Serve's own target-tracking policy within the same bounds (the benchmarks' baseline).
    autoscaling_policy: str = "slo"

    @property
    def idle_cpus(self) -> float:
        """CPUs this tier holds with no traffic at all."""
        held = (
            self.replicas
            if self.replicas is not None
            else (self.autoscaler.min_replicas if self.autoscaler is not None else 0)
        )
        return held * self.num_cpus

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["autoscaler"] = None if self.autoscaler is None else self.autoscaler.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TierSettings:
        d = dict(d)
        if d.get("autoscaler") is not None:
            d["autoscaler"] = AutoscalerConfig.from_dict(d["autoscaler"])
        return cls(**d)


def fixed_plan(contract: RunContract) -> PlacementPlan:
    """The plan of a version with no serving profile: ``serving_replicas`` always-on replicas
    of the full model, no autoscaling (nothing measured to scale by)."""
    n = contract.serving_replicas
    return PlacementPlan(
        variant="full",
        tier=TIER_FIXED,
        num_cpus=FIXED_REPLICA_CPUS,
        num_gpus=0.0,
        resource=contract.serving_node_resource,
        min_replicas=n,
        max_replicas=n,
        initial_replicas=n,
        max_batch_size=64,
        batch_wait_timeout_s=0.002,
        target_ongoing_requests=1.0,
        max_ongoing_requests=32,
        max_queued_requests=256,
        capacity_rps=0.0,
        predicted_tail_ms=0.0,
        accuracy=0.0,
        cost_per_hour=0.0,
        static_peak_cost_per_hour=0.0,
        scale_to_zero=False,
        idle_timeout_s=0.0,
        slo_ms=contract.latency_slo_ms,
        percentile=contract.latency_percentile,
        reasons=(f"no serving profile: {n} fixed replica(s) of {FIXED_REPLICA_CPUS:g} CPU",),
        peak_replicas=n,
    )


def serving_layout(
    plan: PlacementPlan, contract: RunContract, prices: PriceTable
) -> tuple[TierSettings, ...]:
    """The tiers of a version served by ``plan``.

    - ``warm``: the plan's shape, batching and queue bound; replicas by the SLO autoscaler
      between the plan's bounds (fixed for a plan without a profile).
    - ``batch``: large inputs (the router's rule); one replica of at most a quarter CPU with
      large batches. Where the contract allows the ``scale_to_zero`` tier and the price table
      has one, it idles at zero after that tier's idle timeout: a rare large request pays a
      cold start instead of a replica holding CPUs all day.
    - ``elastic``: only where scale-to-zero is allowed and the warm tier is always on: the
      warm shape scaled from zero, for frequent callers when the warm tier is full.
    """
    actor_gpus, resource = plan.num_gpus, plan.resource
    if plan.tier == TIER_FIXED:
        return (
            TierSettings(
                route=ROUTE_WARM,
                num_cpus=plan.num_cpus,
                num_gpus=actor_gpus,
                resource=resource,
                max_ongoing_requests=plan.max_ongoing_requests,
                max_queued_requests=plan.max_queued_requests,
                max_batch_size=plan.max_batch_size,
                batch_wait_timeout_s=plan.batch_wait_timeout_s,
                initial_replicas=plan.initial_replicas,
                replicas=plan.min_replicas,
                reason=plan.reasons[0] if plan.reasons else "fixed",
            ),
        )
    zero = prices.tiers.get(TIER_SCALE_TO_ZERO)
    zero_allowed = zero is not None and TIER_SCALE_TO_ZERO in contract.serving_tiers.split(",")
    warm = TierSettings(
        route=ROUTE_WARM,
        num_cpus=plan.num_cpus,
        num_gpus=actor_gpus,
        resource=resource,
        max_ongoing_requests=plan.max_ongoing_requests,
        max_queued_requests=plan.max_queued_requests,
        max_batch_size=plan.max_batch_size,
        batch_wait_timeout_s=plan.batch_wait_timeout_s,
        initial_replicas=plan.initial_replicas,
        autoscaler=plan.autoscaler_config(),
        reason=plan.reasons[0] if plan.reasons else "",
    )
    batch = TierSettings(
        route=ROUTE_BATCH,
        num_cpus=min(BATCH_TIER_MAX_CPUS, plan.num_cpus),
        num_gpus=actor_gpus,
        resource=resource,
        max_ongoing_requests=BATCH_TIER_MAX_ONGOING,
        max_queued_requests=BATCH_TIER_MAX_QUEUED,
        max_batch_size=BATCH_TIER_MAX_BATCH,
        batch_wait_timeout_s=BATCH_TIER_WAIT_S,
        initial_replicas=1,
        replicas=1,
        reason="large inputs; always on (scale_to_zero not allowed)",
    )
    if zero_allowed and zero is not None:
        batch = replace(
            batch,
            initial_replicas=0,
            replicas=None,
            autoscaler=replace(
                plan.autoscaler_config(),
                min_replicas=0,
                max_replicas=1,
                downscale_to_zero_delay_s=zero.idle_timeout_s,
            ),
            reason=f"large inputs; idles at zero after {zero.idle_timeout_s:g} s "
            f"(scale_to_zero allowed)",
        )
    tiers = [warm, batch]
    if zero_allowed and zero is not None and not plan.scale_to_zero:
        tiers.append(
            TierSettings(
                route=ROUTE_ELASTIC,
                num_cpus=plan.num_cpus,
                num_gpus=actor_gpus,
                resource=resource,
                max_ongoing_requests=plan.max_ongoing_requests,
                max_queued_requests=plan.max_queued_requests,
                max_batch_size=plan.max_batch_size,
                batch_wait_timeout_s=plan.batch_wait_timeout_s,
                initial_replicas=0,
                autoscaler=replace(
                    plan.autoscaler_config(),
                    min_replicas=0,
                    downscale_to_zero_delay_s=zero.idle_timeout_s,
                ),
                reason="frequent callers when the warm tier is full; idles at zero",
            )
        )
    return tuple(tiers)
