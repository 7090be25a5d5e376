"""Placement planner, SLO autoscaler, router and canary rules (pure code, no Ray)."""

from __future__ import annotations

import math

import pytest

from policies import (
    ROUTE_BATCH,
    ROUTE_ELASTIC,
    ROUTE_WARM,
    TIER_GPU,
    TIER_ON_DEMAND,
    TIER_SCALE_TO_ZERO,
    TIER_SPOT,
    AutoscalerConfig,
    CallerRates,
    CanaryStats,
    InFlightBound,
    LoadSample,
    PlacementInfeasible,
    PlacementPlan,
    PriceTable,
    ProfilePoint,
    RouterThresholds,
    ServingProfile,
    TierPrice,
    Traffic,
    VariantInfo,
    autoscale,
    canary_verdict,
    next_canary_share,
    plan_placement,
    predicted_tail_ms,
    replicas_for,
    route_request,
)

pytestmark = pytest.mark.unit


def _profile(gpu: bool = False) -> ServingProfile:
    points = [
        ProfilePoint("full", 1.0, 1, p50_ms=8.0, p99_ms=16.0, capacity_rps=120, row_ms=0.02),
        ProfilePoint("full", 1.0, 16, p50_ms=9.0, p99_ms=18.0, capacity_rps=300, row_ms=0.02),
        ProfilePoint("full", 0.5, 16, p50_ms=10.0, p99_ms=22.0, capacity_rps=160, row_ms=0.03),
        ProfilePoint("int8", 0.5, 16, p50_ms=7.0, p99_ms=14.0, capacity_rps=260, row_ms=0.01),
    ]
    if gpu:
        points.append(
            ProfilePoint("full", 1.0, 64, p50_ms=5.0, p99_ms=7.0, capacity_rps=3000, num_gpus=1.0)
        )
    return ServingProfile(
        variants=(
            VariantInfo("full", 0.95, cold_start_s=6.0),
            VariantInfo("int8", 0.93, cold_start_s=1.5),
        ),
        points=tuple(points),
    )


def _plan(**kw: object) -> PlacementPlan:
    args: dict[str, object] = dict(
        slo_ms=50.0,
        percentile=99,
        min_accuracy=0.9,
        traffic=Traffic(rate_rps=50, peak_rps=200),
        prices=PriceTable.default(),
        allowed_tiers=[TIER_ON_DEMAND],
    )
    args.update(kw)
    return plan_placement(_profile(), **args)  # type: ignore[arg-type]


# ---- latency model ------------------------------------------------------------------------


def test_tail_interpolates_between_p50_and_p99() -> None:
    p = ProfilePoint("full", 1.0, 1, p50_ms=10.0, p99_ms=30.0, capacity_rps=100)
    assert p.tail_ms(50) == 10.0 and p.tail_ms(99) == 30.0
    assert 10.0 < p.tail_ms(90) < p.tail_ms(95) < 30.0


def test_queueing_grows_with_load_and_is_infinite_near_saturation() -> None:
    p = ProfilePoint("full", 1.0, 1, p50_ms=10.0, p99_ms=20.0, capacity_rps=100)
    assert predicted_tail_ms(p, 0.0, 99) == pytest.approx(20.0)
    assert predicted_tail_ms(p, 20, 99) < predicted_tail_ms(p, 60, 99)
    assert math.isinf(predicted_tail_ms(p, 90, 99))


def test_replicas_for_meets_the_slo_with_the_fewest() -> None:
    p = ProfilePoint("full", 1.0, 1, p50_ms=10.0, p99_ms=20.0, capacity_rps=100)
    n = replicas_for(p, 500.0, 60.0, 99)
    assert n is not None
    assert predicted_tail_ms(p, 500 / n, 99) <= 60.0
    assert predicted_tail_ms(p, 500 / (n - 1), 99) > 60.0
    assert replicas_for(p, 10.0, 15.0, 99) is None  # unloaded p99 already over


# ---- placement ----------------------------------------------------------------------------


def test_cheapest_feasible_is_chosen_and_maps_to_serve_settings() -> None:
    plan = _plan()
    # int8 on half a CPU is the cheapest shape that meets 50 ms and 0.9 accuracy
    assert (plan.variant, plan.num_cpus, plan.tier) == ("int8", 0.5, TIER_ON_DEMAND)
    assert plan.predicted_tail_ms <= 50.0
    assert plan.min_replicas <= plan.max_replicas
    assert plan.cost_per_hour < plan.static_peak_cost_per_hour
    assert plan.ray_actor_options() == {"num_cpus": 0.5}
    assert plan.max_queued_requests >= 1 and plan.max_ongoing_requests >= plan.max_batch_size
    assert 0 < plan.batch_wait_timeout_s <= 0.010
    assert PlacementPlan.from_dict(plan.to_dict()) == plan


def test_autoscaler_may_add_one_spare_replica_above_the_planned_peak() -> None:
    """The latency model is optimistic on a shared node: the autoscaler's bound keeps one
    replica above what the model says the peak needs, the replica limit permitting, and
    the cost counts only the planned replicas."""
    plan = _plan()
    point = next(
        p
        for p in _profile().points
        if p.variant == plan.variant
        and p.num_cpus == plan.num_cpus
        and p.max_batch_size == plan.max_batch_size
    )
    assert plan.peak_replicas == replicas_for(
        point, 200, 50.0, 99, plan.batch_wait_timeout_s * 1000
    )
    assert plan.max_replicas == plan.peak_replicas + 1
    assert plan.autoscaler_config().max_replicas == plan.max_replicas
    assert plan.static_peak_cost_per_hour == pytest.approx(plan.peak_replicas * 0.5 * 0.0425)
    capped = _plan(max_replicas=plan.peak_replicas)
    assert capped.max_replicas == capped.peak_replicas == plan.peak_replicas


def test_accuracy_floor_excludes_cheaper_variant() -> None:
    plan = _plan(min_accuracy=0.94)
    assert plan.variant == "full" and plan.accuracy == 0.95


def test_accuracy_nobody_reaches_names_the_gap() -> None:
    with pytest.raises(PlacementInfeasible) as err:
        _plan(min_accuracy=0.97)
    assert err.value.binding == "min_accuracy"
    assert err.value.gap == pytest.approx(0.02)
    assert "0.9700" in str(err.value) and "0.9500" in str(err.value)


def test_impossible_slo_names_the_fastest_shape_and_the_gap() -> None:
    with pytest.raises(PlacementInfeasible) as err:
        _plan(slo_ms=5.0)
    assert err.value.binding == "latency_slo_ms"
    assert err.value.gap == pytest.approx(14.0 - 5.0)  # int8 p99 unloaded is 14 ms
    assert "at least 14" in str(err.value)


def test_too_much_traffic_for_the_replica_limit() -> None:
    with pytest.raises(PlacementInfeasible) as err:
        _plan(traffic=Traffic(rate_rps=100, peak_rps=5000), max_replicas=4)
    assert err.value.binding == "max_replicas" and err.value.gap > 0
    assert "max_replicas=4" in str(err.value)


def test_budget_binds_with_the_overrun() -> None:
    cheapest = _plan().cost_per_hour
    with pytest.raises(PlacementInfeasible) as err:
        _plan(budget_per_hour=cheapest / 2)
    assert err.value.binding == "budget_per_hour"
    assert err.value.gap == pytest.approx(cheapest / 2, rel=1e-3)


def test_unknown_tier_is_refused_by_name() -> None:
    with pytest.raises(PlacementInfeasible, match="tpu"):
        _plan(allowed_tiers=["tpu"])


def test_spot_is_cheaper_but_keeps_a_spare_replica() -> None:
    od = _plan(allowed_tiers=[TIER_ON_DEMAND])
    spot = _plan(allowed_tiers=[TIER_SPOT])
    assert spot.cost_per_hour < od.cost_per_hour
    assert spot.min_replicas == od.min_replicas + 1
    assert _plan(allowed_tiers=[TIER_ON_DEMAND, TIER_SPOT]).tier == TIER_SPOT


def test_scale_to_zero_only_when_cold_starts_stay_within_the_percentile() -> None:
    # 0.001 req/s: a request every ~17 min finds no replica nearly always: cold start 1.5 s
    rare = Traffic(rate_rps=0.001, peak_rps=0.01)
    with pytest.raises(PlacementInfeasible):
        _plan(traffic=rare, allowed_tiers=[TIER_SCALE_TO_ZERO])
    # with an SLO above the cold start, scale-to-zero is the cheapest (it idles at zero)
    plan = _plan(traffic=rare, slo_ms=3000.0, allowed_tiers=[TIER_ON_DEMAND, TIER_SCALE_TO_ZERO])
    assert plan.tier == TIER_SCALE_TO_ZERO and plan.min_replicas == 0 and plan.scale_to_zero
    # busy traffic keeps replicas up: cold starts are rare enough for p99
    busy = _plan(traffic=Traffic(rate_rps=5, peak_rps=20), allowed_tiers=[TIER_SCALE_TO_ZERO])
    assert busy.tier == TIER_SCALE_TO_ZERO


def test_gpu_tier_wins_only_when_cpu_cannot_hold_the_peak() -> None:
    prof = _profile(gpu=True)
    kw = dict(
        slo_ms=50.0,
        percentile=99,
        min_accuracy=0.94,
        prices=PriceTable.default(),
        allowed_tiers=[TIER_ON_DEMAND, TIER_GPU],
        max_replicas=8,
    )
    low = plan_placement(prof, traffic=Traffic(50, 200), **kw)  # type: ignore[arg-type]
    assert low.tier == TIER_ON_DEMAND
    high = plan_placement(prof, traffic=Traffic(1000, 2500), **kw)  # type: ignore[arg-type]
    assert high.tier == TIER_GPU and high.ray_actor_options()["num_gpus"] == 1.0


def test_price_table_from_json_and_custom_resource() -> None:
    prices = PriceTable.from_json(
        '{"tiers": {"cpu_on_demand": {"cpu_hour": 0.05, "resource": "serving_pool"}}}'
    )
    plan = _plan(prices=prices)
    assert plan.ray_actor_options()["resources"] == {"serving_pool": 0.001}
    with pytest.raises(ValueError, match="cpu_hour"):
        PriceTable.from_dict({"tiers": {"x": {"cpu_hours": 1}}})


def test_profile_round_trips() -> None:
    prof = _profile(gpu=True)
    assert ServingProfile.from_dict(prof.to_dict()) == prof
    with pytest.raises(KeyError, match="int4"):
        prof.variant("int4")


# ---- autoscaler ---------------------------------------------------------------------------

CFG = AutoscalerConfig(
    slo_ms=50.0,
    percentile=99,
    capacity_rps=100.0,
    min_replicas=1,
    max_replicas=8,
    downscale_delay_s=20.0,
    downscale_to_zero_delay_s=60.0,
)


def test_scales_to_the_arrival_rate() -> None:
    d = autoscale(CFG, LoadSample(0.0, 1, arrival_rps=250.0, in_system=2))
    assert d.replicas == math.ceil(250 / 60)


def test_queue_beyond_littles_law_scales_up_in_proportion() -> None:
    # 100 req/s x 0.05 s = 5 in system is on time; 40 means 8x too long
    d = autoscale(CFG, LoadSample(0.0, 2, arrival_rps=100.0, in_system=40))
    assert d.replicas == 8 and "queue" in d.reason


def test_tail_latency_over_the_margin_adds_replicas() -> None:
    quiet = autoscale(CFG, LoadSample(0.0, 2, arrival_rps=50.0, in_system=1, tail_latency_ms=20.0))
    assert quiet.replicas == 2
    hot = autoscale(CFG, LoadSample(0.0, 2, arrival_rps=50.0, in_system=1, tail_latency_ms=80.0))
    assert hot.replicas > 2


def test_bounded_by_max_and_min() -> None:
    assert autoscale(CFG, LoadSample(0.0, 4, 10_000.0, 500)).replicas == 8
    assert autoscale(CFG, LoadSample(0.0, 1, 0.0, 0)).replicas == 1


def test_scales_down_only_after_the_delay_and_gradually() -> None:
    st: dict[str, object] = {}
    d = autoscale(CFG, LoadSample(100.0, 6, 30.0, 1), st)
    assert d.replicas == 6
    d = autoscale(CFG, LoadSample(110.0, 6, 30.0, 1), d.state)
    assert d.replicas == 6
    d = autoscale(CFG, LoadSample(121.0, 6, 30.0, 1), d.state)
    assert 1 <= d.replicas < 6
    # a burst in between resets the clock
    st2 = autoscale(CFG, LoadSample(100.0, 6, 30.0, 1)).state
    burst = autoscale(CFG, LoadSample(110.0, 6, 400.0, 30), st2)
    assert burst.replicas >= 6 and "below_since" not in burst.state


def test_scale_to_zero_after_idle_delay_and_back_on_a_request() -> None:
    cfg = AutoscalerConfig(
        slo_ms=50.0,
        percentile=99,
        capacity_rps=100.0,
        min_replicas=0,
        max_replicas=4,
        downscale_to_zero_delay_s=60.0,
    )
    d = autoscale(cfg, LoadSample(0.0, 1, 0.0, 0))
    assert d.replicas == 1
    d = autoscale(cfg, LoadSample(61.0, 1, 0.0, 0), d.state)
    assert d.replicas == 0
    assert autoscale(cfg, LoadSample(62.0, 0, 0.0, 1), d.state).replicas == 1
    # min_replicas 1 never goes to zero
    assert autoscale(CFG, LoadSample(1e6, 1, 0.0, 0), {"below_since": 0.0}).replicas == 1


# ---- routing ------------------------------------------------------------------------------


def test_thresholds_come_from_the_profile() -> None:
    warm = ProfilePoint("full", 1.0, 16, p50_ms=5.0, p99_ms=10.0, capacity_rps=300, row_ms=0.05)
    t = RouterThresholds.from_profile(warm, slo_ms=60.0, percentile=99, idle_timeout_s=30.0)
    assert t.large_rows == int((30.0 - 10.0) / 0.05)
    assert t.frequent_rps == pytest.approx(1 / 30)
    slower = RouterThresholds.from_profile(
        ProfilePoint("full", 1.0, 16, 5.0, 10.0, 300, row_ms=0.2), 60.0, 99, 30.0
    )
    assert slower.large_rows < t.large_rows
    # profiled on a busy node: the tail (66 ms) is past half the SLO; rows adding a tenth of
    # the SLO still go warm (seen in CI: large_rows 1 sent a 2-row request to batch)
    busy = RouterThresholds.from_profile(
        ProfilePoint("int8", 0.5, 1, 22.9, 66.6, 72, row_ms=0.23), 100.0, 99, 60.0
    )
    assert busy.large_rows == int(10.0 / 0.23) and busy.large_rows > 2


def test_straightline_rule() -> None:
    t = RouterThresholds(large_rows=100, frequent_rps=0.5)
    assert route_request(500, 10.0, False, t) == ROUTE_BATCH
    assert route_request(5, 0.01, False, t) == ROUTE_WARM
    assert route_request(5, 10.0, True, t) == ROUTE_ELASTIC
    assert route_request(5, 0.01, True, t) == ROUTE_BATCH


def test_caller_rates_decay_and_stay_bounded() -> None:
    r = CallerRates(half_life_s=10.0, max_callers=3)
    for i in range(50):
        fast = r.observe("a", i * 0.1)
    assert fast > 1.0
    assert r.observe("b", 5.0) < 0.1
    for c in "cdef":
        r.observe(c, 6.0)
    assert len(r) == 3
    # the caller seen longest ago goes first; one seen again is kept
    r.observe("d", 7.0)
    r.observe("g", 7.0)
    assert r.observe("d", 7.0) > r._decay and len(r) == 3


def test_one_client_s_requests_in_flight_are_bounded_whatever_it_calls_itself() -> None:
    bound = InFlightBound(2)
    assert bound.enter("10.0.0.1") and bound.enter("10.0.0.1")
    assert not bound.enter("10.0.0.1")  # the third waits for an answer (429)
    assert bound.enter("10.0.0.2")  # another client is not held up
    bound.leave("10.0.0.1")
    assert bound.enter("10.0.0.1") and bound.in_flight("10.0.0.1") == 2
    for _ in range(2):
        bound.leave("10.0.0.1")
    bound.leave("10.0.0.2")
    assert bound._n == {}  # nothing kept for clients with nothing in flight
    with pytest.raises(ValueError, match="at least 1"):
        InFlightBound(0)


# ---- canary -------------------------------------------------------------------------------


def test_canary_waits_then_advances() -> None:
    old = CanaryStats(500, 0, 20.0)
    assert canary_verdict(CanaryStats(10, 0, 20.0), old, slo_ms=50).action == "wait"
    assert canary_verdict(CanaryStats(100, 0, 22.0), old, slo_ms=50).action == "advance"


def test_canary_rolls_back_on_errors_latency_or_wrong_answers() -> None:
    old = CanaryStats(500, 0, 20.0)
    errs = canary_verdict(CanaryStats(100, 5, 20.0), old, slo_ms=50)
    assert errs.action == "rollback" and "error rate" in errs.reason
    slow = canary_verdict(CanaryStats(100, 0, 90.0), old, slo_ms=50)
    assert slow.action == "rollback" and "SLO" in slow.reason
    wrong = canary_verdict(CanaryStats(100, 0, 20.0, disagreements=80), old, slo_ms=50)
    assert wrong.action == "rollback" and "differ" in wrong.reason
    # slow but no slower than the old version over the same SLO: not the canary's fault
    assert (
        canary_verdict(CanaryStats(100, 0, 60.0), CanaryStats(500, 0, 58.0), slo_ms=50).action
        == "advance"
    )


def test_canary_shares_step_up_to_all() -> None:
    assert next_canary_share(0.0) == 0.1
    assert next_canary_share(0.1) == 0.5
    assert next_canary_share(0.5) == 1.0
    assert next_canary_share(1.0) == 1.0


def test_tier_price_defaults_are_sane() -> None:
    p = PriceTable.default()
    assert p.tiers[TIER_SPOT].cpu_hour < p.tiers[TIER_ON_DEMAND].cpu_hour
    assert p.tiers[TIER_SCALE_TO_ZERO].scale_to_zero and p.tiers[TIER_GPU].gpu
    assert isinstance(p.tiers[TIER_ON_DEMAND], TierPrice)


# ---- the contract's plan ------------------------------------------------------------------


def test_usable_tiers_follow_the_cluster() -> None:
    from policies import usable_tiers

    prices = PriceTable.from_dict(
        {
            "tiers": {
                "cpu_on_demand": {"cpu_hour": 0.04},
                "cpu_spot": {"cpu_hour": 0.01, "resource": "spot"},
                "gpu": {"cpu_hour": 0.04, "gpu_hour": 0.5, "gpu": True},
            }
        }
    )
    usable, why = usable_tiers(prices, {"CPU": 4.0})
    assert set(usable.tiers) == {"cpu_on_demand"}
    assert "spot" in why["cpu_spot"] and "GPU" in why["gpu"]
    usable, _ = usable_tiers(prices, {"CPU": 4.0, "spot": 1.0, "GPU": 1.0})
    assert set(usable.tiers) == {"cpu_on_demand", "cpu_spot", "gpu"}
    pinned, why = usable_tiers(prices, {"CPU": 4.0, "large": 1.0}, node_resource="large")
    assert pinned.tiers["cpu_on_demand"].resource == "large" and "gpu" in why


def test_plan_for_contract_uses_the_contract_fields() -> None:
    from policies import RunContract, plan_for_contract

    contract = RunContract.from_dict(
        {
            "latency_slo_ms": 50,
            "expected_rps": 50,
            "peak_rps": 200,
            "serving_tiers": "cpu_on_demand",
            "serving_replicas": 2,
            "target_accuracy": 0.9,
        }
    )
    # floor max(0.9, 0.95 - 0.01) = 0.94: int8 (0.93) may not serve
    plan = plan_for_contract(contract, _profile(), PriceTable.default(), {"CPU": 4.0})
    assert plan.variant == "full"
    loose = RunContract.from_dict({**contract.to_dict(), "serving_accuracy_slack": 0.02})
    assert plan_for_contract(loose, _profile(), PriceTable.default(), {}).variant == "int8"
    low = RunContract.from_dict(
        {**contract.to_dict(), "serving_accuracy_slack": 0.2, "target_accuracy": 0.94}
    )
    assert plan_for_contract(low, _profile(), PriceTable.default(), {}).variant == "full"
    assert plan.min_replicas >= 2 and any("serving_replicas=2" in r for r in plan.reasons)
    gpu_only = RunContract.from_dict({**contract.to_dict(), "serving_tiers": "gpu"})
    with pytest.raises(PlacementInfeasible) as err:
        plan_for_contract(gpu_only, _profile(), PriceTable.default(), {"CPU": 4.0})
    assert err.value.binding == "serving_tiers" and "no GPU" in str(err.value)


def test_disagreement_bound() -> None:
    from policies import disagreement_bound

    assert disagreement_bound(0.95, 0.97) == pytest.approx(0.18)
    assert disagreement_bound(0.3, 0.2) == 0.9
