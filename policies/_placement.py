"""Serving placement: which model variant, tier, replica shape, batching and replica bounds
serve the contract's traffic within its latency SLO and accuracy floor at the lowest cost.

The self-managed-serving / INFaaS / MArk line of work: from a measured ``ServingProfile``
(latency and capacity of each variant per replica shape and batch size), the expected traffic,
the SLO, the minimum accuracy and a ``PriceTable``, ``plan_placement`` chooses at the lowest
cost or raises ``PlacementInfeasible`` naming the binding constraint and the gap.
``tier_layout`` turns a plan into the settings of each serving tier (warm, batch, elastic).

Latency model (checked against measurements, see docs/serving.md): a replica whose saturated
throughput is ``mu`` requests/s, offered ``lam`` < ``mu``, answers at percentile q in
``p_q(0) + 1000*ln(1/(1-q))*(1/(mu-lam) - 1/mu)`` ms (the profiled unloaded percentile plus the
M/M/1 queueing term).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Final

from policies._autoscaling import AutoscalerConfig

if TYPE_CHECKING:
    from policies._contract import RunContract

TIER_ON_DEMAND: Final = "cpu_on_demand"
TIER_SPOT: Final = "cpu_spot"
TIER_GPU: Final = "gpu"
TIER_SCALE_TO_ZERO: Final = "scale_to_zero"
TIERS: Final[tuple[str, ...]] = (TIER_ON_DEMAND, TIER_SPOT, TIER_GPU, TIER_SCALE_TO_ZERO)

# Above this utilisation the queueing term explodes and the M/M/1 estimate is worthless.
MAX_UTILISATION: Final = 0.85


# --------------------------------------------------------------------------------------------
# Profile, traffic and prices
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantInfo:
    """A servable form of the model, with its own measured accuracy."""

    name: str  # "full" (the SavedModel) or a cheaper form, e.g. "int8"
    accuracy: float  # test-set accuracy of this variant
    cold_start_s: float  # measured seconds from replica start to first answer
    size_bytes: int = 0


@dataclass(frozen=True)
class ProfilePoint:
    """One measured shape: a variant on a replica of ``num_cpus``/``num_gpus`` at a batch size.

    ``p50_ms``/``p99_ms`` are end-to-end HTTP latencies of one-row requests at low load;
    ``capacity_rps`` is the saturated throughput of one replica (one-row requests, batched up
    to ``max_batch_size`` by ``@serve.batch``); ``row_ms`` the extra time per row of a request.
    """

    variant: str
    num_cpus: float
    max_batch_size: int
    p50_ms: float
    p99_ms: float
    capacity_rps: float
    row_ms: float = 0.0
    num_gpus: float = 0.0

    def tail_ms(self, percentile: int) -> float:
        """Unloaded latency at ``percentile``, interpolated between p50 and p99."""
        if percentile <= 50:
            return self.p50_ms
        if percentile >= 99:
            return self.p99_ms
        # log-linear in 1/(1-q), exact at both ends; exponential tails are linear in it.
        lo, hi = math.log(2.0), math.log(100.0)
        t = (math.log(1.0 / (1.0 - percentile / 100.0)) - lo) / (hi - lo)
        return self.p50_ms + t * (self.p99_ms - self.p50_ms)


@dataclass(frozen=True)
class ServingProfile:
    variants: tuple[VariantInfo, ...]
    points: tuple[ProfilePoint, ...]
    overhead_p50_ms: float = 0.0  # no-op deployment on the same path, for reference

    def variant(self, name: str) -> VariantInfo:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"profile has no variant {name!r}; it has {[v.name for v in self.variants]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "variants": [asdict(v) for v in self.variants],
            "points": [asdict(p) for p in self.points],
            "overhead_p50_ms": self.overhead_p50_ms,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServingProfile:
        return cls(
            tuple(VariantInfo(**v) for v in d["variants"]),
            tuple(ProfilePoint(**p) for p in d["points"]),
            float(d.get("overhead_p50_ms", 0.0)),
        )


@dataclass(frozen=True)
class Traffic:
    """Expected load: mean and peak rate, how long peaks last, request sizes."""

    rate_rps: float
    peak_rps: float
    peak_fraction: float = 0.1  # share of time at the peak rate
    rows_p50: int = 1
    rows_max: int = 1

    def __post_init__(self) -> None:
        if self.rate_rps < 0 or self.peak_rps < self.rate_rps:
            raise ValueError(
                f"traffic: need 0 <= rate_rps ({self.rate_rps}) <= peak_rps ({self.peak_rps})"
            )
        if not 0 <= self.peak_fraction <= 1:
            raise ValueError(f"traffic: peak_fraction {self.peak_fraction} must be in [0, 1]")


@dataclass(frozen=True)
class TierPrice:
    """What one tier costs and how it maps to Ray Serve.

    ``cpu_hour``/``gpu_hour``: price per CPU/GPU-hour a replica reserves. ``resource``: a
    custom Ray resource nodes of this tier were started with (``ray start --resources``);
    replicas then ask for a sliver of it so they land there; empty means any node.
    ``replica_headroom``: extra replicas kept for preemption (spot). ``scale_to_zero``: the tier
    idles at zero replicas and pays the variant's cold start on the first request after
    ``idle_timeout_s`` without traffic.
    """

    cpu_hour: float
    gpu_hour: float = 0.0
    resource: str = ""
    replica_headroom: int = 0
    scale_to_zero: bool = False
    idle_timeout_s: float = 60.0
    gpu: bool = False


@dataclass(frozen=True)
class PriceTable:
    tiers: Mapping[str, TierPrice]
    currency: str = "USD"

    @classmethod
    def default(cls) -> PriceTable:
        """Public list prices of late 2026, rounded (per vCPU-hour / GPU-hour)."""
        return cls(
            {
                TIER_ON_DEMAND: TierPrice(cpu_hour=0.0425),
                TIER_SPOT: TierPrice(cpu_hour=0.0150, replica_headroom=1),
                TIER_GPU: TierPrice(cpu_hour=0.0425, gpu_hour=0.526, gpu=True),
                TIER_SCALE_TO_ZERO: TierPrice(
                    cpu_hour=0.0510, scale_to_zero=True, idle_timeout_s=60.0
                ),
            }
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PriceTable:
        tiers = d.get("tiers", d)
        if not isinstance(tiers, Mapping) or not tiers:
            raise ValueError("price table: expected {'tiers': {name: {cpu_hour: ...}}}")
        out: dict[str, TierPrice] = {}
        for name, spec in tiers.items():
            if not isinstance(spec, Mapping):
                raise ValueError(f"price table: tier {name!r} must be an object")
            try:
                out[str(name)] = TierPrice(**spec)
            except TypeError as exc:
                raise ValueError(
                    f"price table: tier {name!r}: {exc}; fields are cpu_hour, "
                    f"gpu_hour, resource, replica_headroom, scale_to_zero, "
                    f"idle_timeout_s, gpu"
                ) from exc
            if out[str(name)].cpu_hour < 0 or out[str(name)].gpu_hour < 0:
                raise ValueError(f"price table: tier {name!r} has a negative price")
        return cls(out, str(d.get("currency", "USD")))

    @classmethod
    def from_json(cls, text: str) -> PriceTable:
        return cls.from_dict(json.loads(text))


# --------------------------------------------------------------------------------------------
# Latency model
# --------------------------------------------------------------------------------------------


def predicted_tail_ms(
    point: ProfilePoint, rate_per_replica: float, percentile: int, batch_wait_ms: float = 0.0
) -> float:
    """Tail latency of one replica offered ``rate_per_replica``; inf at or past saturation."""
    mu = point.capacity_rps
    if rate_per_replica >= mu * MAX_UTILISATION:
        return math.inf
    q = min(percentile, 99.9) / 100.0
    queueing = 1000.0 * math.log(1.0 / (1.0 - q)) * (1.0 / (mu - rate_per_replica) - 1.0 / mu)
    return point.tail_ms(percentile) + queueing + batch_wait_ms


def replicas_for(
    point: ProfilePoint,
    rate: float,
    slo_ms: float,
    percentile: int,
    batch_wait_ms: float = 0.0,
    limit: int = 10_000,
) -> int | None:
    """Fewest replicas whose predicted tail at ``rate`` meets the SLO (None: none can)."""
    if point.tail_ms(percentile) + batch_wait_ms > slo_ms:
        return None
    if rate <= 0:
        return 1
    n = max(1, math.ceil(rate / (point.capacity_rps * MAX_UTILISATION)))
    while n <= limit:
        if predicted_tail_ms(point, rate / n, percentile, batch_wait_ms) <= slo_ms:
            return n
        n += 1
    return None


# --------------------------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlacementPlan:
    variant: str
    tier: str
    num_cpus: float
    num_gpus: float
    resource: str
    min_replicas: int
    max_replicas: int  # the autoscaler's bound: peak_replicas + SPARE_REPLICAS
    initial_replicas: int
    max_batch_size: int
    batch_wait_timeout_s: float
    target_ongoing_requests: float
    max_ongoing_requests: int
    max_queued_requests: int
    capacity_rps: float  # per replica, from the profile
    predicted_tail_ms: float  # at the peak rate on peak_replicas
    accuracy: float
    cost_per_hour: float
    static_peak_cost_per_hour: float  # the same shape kept at peak_replicas all the time
    scale_to_zero: bool
    idle_timeout_s: float
    slo_ms: float
    percentile: int
    reasons: tuple[str, ...] = ()
    peak_replicas: int = 0  # what the latency model says the peak needs (0: unknown)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlacementPlan:
        d = dict(d)
        d["reasons"] = tuple(d.get("reasons", ()))
        return cls(**d)

    def ray_actor_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            opts["num_gpus"] = self.num_gpus
        if self.resource:
            opts["resources"] = {self.resource: 0.001}
        return opts

    def autoscaler_config(self) -> AutoscalerConfig:
        return AutoscalerConfig(
            slo_ms=self.slo_ms,
            percentile=self.percentile,
            capacity_rps=self.capacity_rps,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            downscale_to_zero_delay_s=self.idle_timeout_s,
        )


class PlacementInfeasible(ValueError):
    """No candidate fits: ``binding`` names the constraint, ``gap`` how far off it is."""

    def __init__(self, binding: str, gap: float, message: str) -> None:
        super().__init__(message)
        self.binding, self.gap = binding, gap


@dataclass(frozen=True)
class _Candidate:
    plan: PlacementPlan
    sort_key: tuple[float, ...]


def _batch_wait_ms(
    point: ProfilePoint, slo_ms: float, percentile: int, rate_per_replica: float
) -> float:
    """Wait for a batch to fill: at most a quarter of the SLO's slack and 10 ms, and no
    longer than it takes the expected traffic to bring ``max_batch_size`` requests."""
    if point.max_batch_size <= 1:
        return 0.0
    slack = max(0.0, slo_ms - point.tail_ms(percentile))
    fill = 1000.0 * (point.max_batch_size - 1) / max(rate_per_replica, 1.0)
    return round(min(0.25 * slack, 10.0, fill), 3)


#: Replicas the autoscaler may add above the planned peak. The latency model (profiled
#: percentile + M/M/1 queueing) does not see CPU shared with proxies, routers and other
#: replicas, so it is optimistic on a busy node (bench-serving: predicted p99 96 ms, measured
#: 134 ms at the spikes). The spare costs nothing until the measured tail asks for it; the
#: plan's cost counts the planned replicas only.
SPARE_REPLICAS = 1


def plan_placement(
    profile: ServingProfile,
    *,
    slo_ms: float,
    percentile: int,
    min_accuracy: float,
    traffic: Traffic,
    prices: PriceTable,
    allowed_tiers: Iterable[str] | None = None,
    max_replicas: int = 16,
    budget_per_hour: float | None = None,
) -> PlacementPlan:
    """The cheapest placement meeting SLO and accuracy; raise ``PlacementInfeasible`` if none.

    Cost is the expected replica-hours under autoscaling: enough replicas for the mean rate
    most of the time and for the peak during ``traffic.peak_fraction`` (plus preemption
    headroom on spot). A scale-to-zero tier is only a candidate when cold starts (requests
    that find no replica after ``idle_timeout_s`` of silence, ``exp(-rate*idle)`` of them for
    Poisson arrivals) stay within the share of requests the percentile lets miss the SLO.
    Ties go to the more accurate variant, then the lower latency.
    """
    if slo_ms <= 0:
        raise PlacementInfeasible("latency_slo_ms", -slo_ms, "latency_slo_ms must be > 0")
    allowed = [t for t in (allowed_tiers or prices.tiers) if t in prices.tiers]
    unknown = [t for t in (allowed_tiers or ()) if t not in prices.tiers]
    if unknown:
        raise PlacementInfeasible(
            "serving_tiers",
            float(len(unknown)),
            f"serving_tiers names {unknown}, which the price table lacks; it has "
            f"{sorted(prices.tiers)}",
        )
    if not allowed:
        raise PlacementInfeasible(
            "serving_tiers", 1.0, f"no serving tier is allowed: allow one of {sorted(prices.tiers)}"
        )
    accurate = {v.name for v in profile.variants if v.accuracy >= min_accuracy}
    if not accurate:
        best = max((v.accuracy for v in profile.variants), default=0.0)
        raise PlacementInfeasible(
            "min_accuracy",
            min_accuracy - best,
            f"no model variant reaches the minimum serving accuracy {min_accuracy:.4f}: the "
            f"best profiled variant has {best:.4f} ({min_accuracy - best:.4f} short); lower "
            f"the minimum accuracy or train a better model",
        )
    q_miss = 1.0 - percentile / 100.0
    candidates: list[_Candidate] = []
    best_unloaded = math.inf
    best_unloaded_desc = ""
    fewest_needed: tuple[int, str] | None = None
    cheapest_over_budget: float | None = None
    for tier_name in allowed:
        tier = prices.tiers[tier_name]
        for point in profile.points:
            if point.variant not in accurate or (point.num_gpus > 0) != tier.gpu:
                continue
            variant = profile.variant(point.variant)
            unloaded = point.tail_ms(percentile)
            if unloaded < best_unloaded:
                best_unloaded = unloaded
                best_unloaded_desc = (
                    f"variant {point.variant}, {point.num_cpus:g} CPU"
                    f"{f' + {point.num_gpus:g} GPU' if point.num_gpus else ''}"
                    f", batch {point.max_batch_size}"
                )
            if tier.scale_to_zero:
                cold_share = math.exp(-traffic.rate_rps * tier.idle_timeout_s)
                if cold_share > q_miss and variant.cold_start_s * 1000 > slo_ms:
                    continue
            peak_per_replica_guess = traffic.peak_rps / max(
                1, math.ceil(traffic.peak_rps / (point.capacity_rps * MAX_UTILISATION))
            )
            wait = _batch_wait_ms(point, slo_ms, percentile, peak_per_replica_guess)
            n_peak = replicas_for(point, traffic.peak_rps, slo_ms, percentile, wait)
            n_mean = replicas_for(point, traffic.rate_rps, slo_ms, percentile, wait)
            if n_peak is None or n_mean is None:
                continue
            n_peak += tier.replica_headroom
            n_mean += tier.replica_headroom
            if n_peak > max_replicas:
                if fewest_needed is None or n_peak < fewest_needed[0]:
                    fewest_needed = (
                        n_peak,
                        f"{tier_name}/{point.variant}/"
                        f"{point.num_cpus:g}cpu/b{point.max_batch_size}",
                    )
                continue
            per_replica = point.num_cpus * tier.cpu_hour + point.num_gpus * tier.gpu_hour
            expected = n_mean * (1 - traffic.peak_fraction) + n_peak * traffic.peak_fraction
            min_replicas = n_mean
            if tier.scale_to_zero:
                up_share = 1.0 - math.exp(-traffic.rate_rps * tier.idle_timeout_s)
                expected *= up_share
                min_replicas = 0
            cost = round(expected * per_replica, 6)
            if budget_per_hour is not None and cost > budget_per_hour:
                if cheapest_over_budget is None or cost < cheapest_over_budget:
                    cheapest_over_budget = cost
                continue
            tail = (
                predicted_tail_ms(point, traffic.peak_rps / n_peak, percentile, wait)
                if traffic.peak_rps > 0
                else unloaded + wait
            )
            slo_s = slo_ms / 1000.0
            # Little's law: a replica holding more than capacity x SLO requests answers late.
            per_replica_in_flight = max(1, math.floor(point.capacity_rps * slo_s))
            plan = PlacementPlan(
                variant=point.variant,
                tier=tier_name,
                num_cpus=point.num_cpus,
                num_gpus=point.num_gpus,
                resource=tier.resource,
                min_replicas=min_replicas,
                peak_replicas=n_peak,
                max_replicas=min(max_replicas, n_peak + SPARE_REPLICAS),
                initial_replicas=max(min_replicas, 1 if not tier.scale_to_zero else 0),
                max_batch_size=point.max_batch_size,
                batch_wait_timeout_s=wait / 1000.0,
                target_ongoing_requests=round(max(1.0, 0.5 * per_replica_in_flight), 2),
                max_ongoing_requests=max(point.max_batch_size, per_replica_in_flight),
                max_queued_requests=max(1, math.ceil(n_peak * point.capacity_rps * slo_s)),
                capacity_rps=point.capacity_rps,
                predicted_tail_ms=round(tail, 3),
                accuracy=variant.accuracy,
                cost_per_hour=cost,
                static_peak_cost_per_hour=round(n_peak * per_replica, 6),
                scale_to_zero=tier.scale_to_zero,
                idle_timeout_s=tier.idle_timeout_s,
                slo_ms=slo_ms,
                percentile=percentile,
                reasons=(
                    f"{tier_name}: {n_mean}-{n_peak} x {point.variant} "
                    f"({point.num_cpus:g} CPU, batch {point.max_batch_size}) meets "
                    f"p{percentile} {tail:.1f} <= {slo_ms:g} ms at {traffic.peak_rps:g} "
                    f"req/s for {cost:.4f} {prices.currency}/h",
                    f"accuracy {variant.accuracy:.4f} >= {min_accuracy:.4f}",
                ),
            )
            candidates.append(_Candidate(plan, (cost, -variant.accuracy, tail)))
    if candidates:
        chosen = min(candidates, key=lambda c: c.sort_key)
        rejected = len(candidates) - 1
        return replace(
            chosen.plan,
            reasons=chosen.plan.reasons
            + (f"cheapest of {len(candidates)} feasible placements ({rejected} dearer)",),
        )
    if best_unloaded > slo_ms:
        raise PlacementInfeasible(
            "latency_slo_ms",
            best_unloaded - slo_ms,
            f"no placement meets latency_slo_ms={slo_ms:g} at p{percentile}: the fastest "
            f"profiled shape ({best_unloaded_desc}) answers in {best_unloaded:.1f} ms with no "
            f"load, {best_unloaded - slo_ms:.1f} ms over; raise latency_slo_ms to at least "
            f"{math.ceil(best_unloaded)} or allow a faster tier",
        )
    if fewest_needed is not None:
        raise PlacementInfeasible(
            "max_replicas",
            float(fewest_needed[0] - max_replicas),
            f"the peak of {traffic.peak_rps:g} req/s needs {fewest_needed[0]} replicas "
            f"({fewest_needed[1]}) to meet {slo_ms:g} ms at p{percentile}, "
            f"{fewest_needed[0] - max_replicas} more than max_replicas={max_replicas}; raise "
            f"the replica limit or lower the expected peak",
        )
    if cheapest_over_budget is not None and budget_per_hour is not None:
        raise PlacementInfeasible(
            "budget_per_hour",
            cheapest_over_budget - budget_per_hour,
            f"the cheapest placement meeting the SLO costs {cheapest_over_budget:.4f}/h, "
            f"{cheapest_over_budget - budget_per_hour:.4f} over the budget of "
            f"{budget_per_hour:.4f}/h; raise the budget or relax the SLO",
        )
    raise PlacementInfeasible(
        "latency_slo_ms",
        0.0,
        f"no allowed tier ({allowed}) can meet latency_slo_ms={slo_ms:g} at p{percentile} "
        f"for {traffic.rate_rps:g}-{traffic.peak_rps:g} req/s (scale-to-zero cold starts "
        f"would miss it); allow an always-on tier or raise the SLO",
    )


def usable_tiers(
    prices: PriceTable, cluster_resources: Mapping[str, float], node_resource: str = ""
) -> tuple[PriceTable, dict[str, str]]:
    """The tiers this cluster can host, and why each other one cannot.

    ``node_resource`` (the contract's placement preference) replaces every tier's resource; a
    tier whose resource no node has, or a GPU tier on a cluster without GPUs, is left out.
    """
    keep: dict[str, TierPrice] = {}
    why: dict[str, str] = {}
    for name, tier in prices.tiers.items():
        if node_resource:
            tier = replace(tier, resource=node_resource)
        if tier.resource and cluster_resources.get(tier.resource, 0) <= 0:
            why[name] = f"no node has the resource {tier.resource!r}"
        elif tier.gpu and cluster_resources.get("GPU", 0) <= 0:
            why[name] = "the cluster has no GPU"
        else:
            keep[name] = tier
    return PriceTable(keep, prices.currency), why


def plan_for_contract(
    contract: RunContract,
    profile: ServingProfile,
    prices: PriceTable,
    cluster_resources: Mapping[str, float],
) -> PlacementPlan:
    """``plan_placement`` with the contract's serving fields, on the tiers the cluster has.

    Accuracy floor: the full model's measured accuracy, less ``serving_accuracy_slack`` but
    never below ``target_accuracy``. ``serving_replicas`` is kept always on (unless the plan
    idles at zero). Raises ``PlacementInfeasible`` naming the binding constraint.
    """
    full = profile.variant("full").accuracy
    slack = contract.serving_accuracy_slack
    floor = full if slack == 0 else max(contract.target_score, full - slack)
    usable, why = usable_tiers(prices, cluster_resources, contract.serving_node_resource)
    wanted = [t for t in contract.serving_tiers.split(",") if t]
    allowed = [t for t in wanted if t in usable.tiers]
    if not allowed:
        reasons = "; ".join(f"{t}: {why.get(t, 'not in the price table')}" for t in wanted)
        raise PlacementInfeasible(
            "serving_tiers",
            float(len(wanted)),
            f"no allowed serving tier is usable on this cluster ({reasons});"
            f" allow another tier or add nodes with the resource",
        )
    plan = plan_placement(
        profile,
        slo_ms=contract.latency_slo_ms,
        percentile=contract.latency_percentile,
        min_accuracy=floor,
        traffic=Traffic(contract.expected_rps, contract.peak_rps),
        prices=usable,
        allowed_tiers=allowed,
        max_replicas=contract.serving_max_replicas,
        budget_per_hour=contract.serving_budget_per_hour or None,
    )
    if not plan.scale_to_zero and plan.min_replicas < contract.serving_replicas:
        plan = replace(
            plan,
            min_replicas=contract.serving_replicas,
            initial_replicas=contract.serving_replicas,
            max_replicas=max(plan.max_replicas, contract.serving_replicas),
            reasons=plan.reasons
            + (f"at least serving_replicas={contract.serving_replicas} always on",),
        )
    return plan
