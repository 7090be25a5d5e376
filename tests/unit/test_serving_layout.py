"""Serving decisions that used to live in the deploy operator: which tiers a version gets,
what idles at zero, what served models hold and whether a need fits beside them, and the
canary loop's knobs."""

from __future__ import annotations

import pytest

from policies import (
    CanaryPolicy,
    CanaryStats,
    PlacementPlan,
    PriceTable,
    RunContract,
    ServedDeployment,
    ServingFootprint,
    canary_step,
    capacity_check,
    fixed_plan,
    model_of_app,
    parse_version_app,
    serving_layout,
    version_app,
)

pytestmark = pytest.mark.unit


def _plan(**over: object) -> PlacementPlan:
    base = dict(
        variant="int8",
        tier="cpu_on_demand",
        num_cpus=0.5,
        num_gpus=0.0,
        resource="",
        min_replicas=1,
        max_replicas=3,
        initial_replicas=1,
        max_batch_size=8,
        batch_wait_timeout_s=0.002,
        target_ongoing_requests=2.0,
        max_ongoing_requests=8,
        max_queued_requests=16,
        capacity_rps=80.0,
        predicted_tail_ms=40.0,
        accuracy=0.95,
        cost_per_hour=0.02,
        static_peak_cost_per_hour=0.04,
        scale_to_zero=False,
        idle_timeout_s=60.0,
        slo_ms=100.0,
        percentile=99,
        reasons=("planned",),
        peak_replicas=2,
    )
    base.update(over)
    return PlacementPlan(**base)  # type: ignore[arg-type]


def test_always_on_plan_with_scale_to_zero_allowed_idles_batch_and_elastic_at_zero() -> None:
    contract = RunContract.from_dict({"serving_tiers": "cpu_on_demand,scale_to_zero"})
    tiers = {t.route: t for t in serving_layout(_plan(), contract, PriceTable.default())}
    assert set(tiers) == {"warm", "batch", "elastic"}
    warm = tiers["warm"]
    assert warm.autoscaler is not None and warm.autoscaler.max_replicas == 3
    assert warm.num_cpus == 0.5 and warm.max_batch_size == 8 and warm.initial_replicas == 1
    batch = tiers["batch"]
    assert batch.num_cpus == 0.25 and batch.max_batch_size == 1024
    assert batch.autoscaler is not None and batch.autoscaler.min_replicas == 0
    assert batch.autoscaler.max_replicas == 1 and batch.initial_replicas == 0
    assert tiers["elastic"].autoscaler is not None
    assert tiers["elastic"].autoscaler.min_replicas == 0
    # what the version holds with no traffic at all: the warm floor only
    assert sum(t.idle_cpus for t in tiers.values()) == pytest.approx(0.5)


def test_without_scale_to_zero_the_batch_tier_is_always_on_and_there_is_no_elastic() -> None:
    contract = RunContract.from_dict({"serving_tiers": "cpu_on_demand"})
    tiers = {t.route: t for t in serving_layout(_plan(), contract, PriceTable.default())}
    assert set(tiers) == {"warm", "batch"}
    assert tiers["batch"].replicas == 1 and tiers["batch"].autoscaler is None
    assert "not allowed" in tiers["batch"].reason


def test_a_plan_that_already_scales_to_zero_gets_no_elastic_tier() -> None:
    contract = RunContract.from_dict({"serving_tiers": "scale_to_zero"})
    plan = _plan(tier="scale_to_zero", scale_to_zero=True, min_replicas=0, initial_replicas=0)
    assert {t.route for t in serving_layout(plan, contract, PriceTable.default())} == {
        "warm",
        "batch",
    }


def test_gpu_and_node_resource_reach_every_tier_and_batch_never_exceeds_the_warm_shape() -> None:
    contract = RunContract.from_dict({"serving_node_resource": "large"})
    plan = _plan(num_cpus=0.2, num_gpus=1.0, resource="large")
    for t in serving_layout(plan, contract, PriceTable.default()):
        assert t.num_gpus == 1.0 and t.resource == "large" and t.num_cpus <= 0.2


def test_fixed_plan_is_the_contract_replicas_of_the_full_model_alone() -> None:
    contract = RunContract.from_dict({"serving_replicas": 2})
    tiers = serving_layout(fixed_plan(contract), contract, PriceTable.default())
    assert len(tiers) == 1 and tiers[0].route == "warm" and tiers[0].replicas == 2
    assert tiers[0].autoscaler is None and "no serving profile" in tiers[0].reason


def test_tier_settings_round_trip() -> None:
    from policies import TierSettings

    contract = RunContract.from_dict({})
    for t in serving_layout(_plan(), contract, PriceTable.default()):
        assert TierSettings.from_dict(t.to_dict()) == t


@pytest.mark.parametrize(
    ("app", "parsed"),
    [
        ("digits+v3", ("digits", "3")),
        ("a.b-c_d+v12", ("a.b-c_d", "12")),
        ("digits", None),
        ("digits+x3", None),
        ("+v1", None),
        ("digits+v", None),
    ],
)
def test_version_application_names(app: str, parsed: tuple[str, str] | None) -> None:
    assert parse_version_app(app) == parsed
    if parsed:
        assert version_app(*parsed) == app and model_of_app(app) == parsed[0]
    else:
        assert model_of_app(app) == app


def test_no_model_name_is_another_models_version_application() -> None:
    """Model names are letters, digits, '-', '_' and '.': never the separator."""
    from policies import FIELDS_BY_NAME, VERSION_SEP

    pattern = FIELDS_BY_NAME["model_name"].pattern
    assert pattern is not None
    import re

    assert re.fullmatch(pattern, f"digits{VERSION_SEP}v1") is None


def _footprint() -> ServingFootprint:
    return ServingFootprint.of(
        [
            ServedDeployment("digits", "ModelRouter", 1, 0.05),
            ServedDeployment("digits+v2", "warm", 2, 0.5),
            ServedDeployment("digits+v2", "batch", 0, 0.25),
            ServedDeployment("iris", "ModelRouter", 1, 0.05),
            ServedDeployment("iris+v1", "warm", 1, 1.0, num_gpus=1.0),
        ]
    )


def test_footprint_per_model_largest_first_and_described() -> None:
    fp = _footprint()
    assert fp.cpus == pytest.approx(2.1) and fp.gpus == 1.0
    assert fp.by_model() == {"digits": 1.05, "iris": 1.05} or list(fp.by_model()) == [
        "digits",
        "iris",
    ]
    text = fp.describe()
    assert "digits 1.05 CPU (router 1x0.05, v2 warm 2x0.5)" in text
    assert "batch" not in text  # idle at zero: holds nothing, named nowhere
    assert fp.of_model("iris").cpus == pytest.approx(1.05)


def test_capacity_check_names_the_holders_and_the_fix_when_short() -> None:
    check = capacity_check(
        need_cpus=1.0, free_cpus=0.55, footprint=_footprint(), what="profiling a 1-CPU replica"
    )
    assert not check.fits
    assert "needs 1 CPU (0.55 free)" in check.message
    assert "served models hold 2.1 CPU" in check.message and "digits 1.05 CPU" in check.message
    assert "make undeploy MODEL=<name>" in check.message
    ok = capacity_check(need_cpus=0.5, free_cpus=0.55, footprint=_footprint(), what="x")
    assert ok.fits
    gpu = capacity_check(
        need_cpus=0.5,
        free_cpus=4.0,
        need_gpus=1.0,
        free_gpus=0.0,
        footprint=_footprint(),
        what="a GPU replica",
    )
    assert not gpu.fits and "1 GPU (0 free)" in gpu.message


def test_capacity_check_on_an_empty_cluster_says_what_else_holds_cpus() -> None:
    check = capacity_check(need_cpus=2, free_cpus=1, footprint=ServingFootprint(), what="x")
    assert not check.fits and "nothing is served" in check.message
    assert "wait for the running jobs to end" in check.message


def test_canary_policy_validates_its_shares() -> None:
    assert CanaryPolicy().steps() == (0.1, 0.5)
    for bad in ((), (0.5, 0.1, 1.0), (0.1, 0.5), (0.0, 1.0)):
        with pytest.raises(ValueError, match="shares"):
            CanaryPolicy(shares=bad)


def test_canary_step_rolls_back_a_step_that_never_got_enough_traffic() -> None:
    policy = CanaryPolicy(min_requests=20, max_probe_rounds=3)
    few = CanaryStats(5, 0, 10.0)
    kw = dict(policy=policy, slo_ms=100.0, old_accuracy=0.9, new_accuracy=0.9)
    assert canary_step(few, None, rounds_done=2, **kw).action == "wait"
    verdict = canary_step(few, None, rounds_done=3, **kw)
    assert verdict.action == "rollback" and "only 5 of the 20" in verdict.reason
    good = CanaryStats(30, 0, 10.0, disagreements=2)
    assert canary_step(good, CanaryStats(60, 0, 9.0), rounds_done=1, **kw).action == "advance"
    wrong = CanaryStats(30, 0, 10.0, disagreements=20)
    assert canary_step(wrong, None, rounds_done=1, **kw).action == "rollback"


def test_disagreement_is_a_sequential_test_not_a_threshold_on_a_few_answers() -> None:
    """The e2e canary (v1 at 0.77, v2 at 0.91: allowance 0.42) once rolled a better v2 back on
    14 of its first 27 answers; the interval (0.31-0.72) says that is not yet evidence: it
    waits, then passes once more answers bring the share under the allowance, or rolls back
    when the rounds are spent and it is still in doubt. A wrong model is rolled back at once."""
    policy = CanaryPolicy(min_requests=20, max_probe_rounds=4)
    kw = dict(policy=policy, slo_ms=300.0, old_accuracy=0.7658, new_accuracy=0.9108)
    doubt = canary_step(CanaryStats(27, 0, 20.0, disagreements=14), None, rounds_done=1, **kw)
    assert doubt.action == "wait" and "not yet sure" in doubt.reason
    assert "0.31-0.72" in doubt.reason and "allowed 0.42" in doubt.reason
    later = canary_step(CanaryStats(90, 0, 20.0, disagreements=30), None, rounds_done=3, **kw)
    assert later.action == "advance"
    spent = canary_step(CanaryStats(60, 0, 20.0, disagreements=28), None, rounds_done=4, **kw)
    assert spent.action == "rollback" and "still after 4 probe rounds" in spent.reason
    wrong = canary_step(CanaryStats(27, 0, 20.0, disagreements=25), None, rounds_done=1, **kw)
    assert wrong.action == "rollback" and "not yet sure" not in wrong.reason
    # the same evidence, surer wanted: a z of 1.0 rolls 14/27 back
    from policies import canary_verdict

    loose = canary_verdict(
        CanaryStats(27, 0, 20.0, 14),
        None,
        slo_ms=300,
        min_requests=20,
        max_disagreement=0.42,
        disagreement_z=1.0,
    )
    assert loose.action == "rollback"


def test_an_advance_over_the_slo_says_so() -> None:
    """A canary as slow as the old version advances, and the reason does not claim it met
    the SLO (it said '<= SLO' for a 1500 ms tail before)."""
    from policies import canary_verdict

    verdict = canary_verdict(
        CanaryStats(30, 0, 1500.0), CanaryStats(60, 0, 1400.0), slo_ms=100.0, min_requests=20
    )
    assert verdict.action == "advance"
    assert "over the SLO 100 ms but within 1.5x the old version's 1400.0 ms" in verdict.reason
