from __future__ import annotations

from typing import Any

import pytest

from policies import (
    CHALLENGER,
    CHAMPION,
    ChampionRecord,
    PromotionDecision,
    ReviewOutcome,
    apply_review,
    decide_promotion,
    required_accuracy,
    review_request,
)

pytestmark = pytest.mark.unit


def test_first_model_meeting_target_becomes_champion() -> None:
    d = decide_promotion(0.95, 0.9, 0.01, None)
    assert d.promote and d.alias == CHAMPION
    assert any("no champion yet" in r for r in d.reasons)


def test_model_below_target_stays_challenger_and_says_why() -> None:
    d = decide_promotion(0.85, 0.9, 0.0, None)
    assert not d.promote and d.alias == CHALLENGER
    assert d.reasons[0].startswith("FAIL target_accuracy")
    assert "0.8500" in d.reasons[0] and "0.9000" in d.reasons[0]


def test_must_beat_champion_by_min_gain() -> None:
    champ = ChampionRecord(version="3", accuracy=0.95)
    assert not decide_promotion(0.955, 0.9, 0.01, champ).promote
    assert decide_promotion(0.96, 0.9, 0.01, champ).promote
    failed = decide_promotion(0.955, 0.9, 0.01, champ)
    assert "champion v3" in failed.reasons[1] and failed.reasons[1].startswith("FAIL")


def test_tie_with_zero_gain_promotes() -> None:
    assert decide_promotion(0.95, 0.9, 0.0, ChampionRecord("1", 0.95)).promote


def test_both_checks_must_pass() -> None:
    d = decide_promotion(0.88, 0.9, 0.0, ChampionRecord("1", 0.5))
    assert not d.promote
    assert [c.passed for c in d.checks] == [False, True]


def test_decision_serialises_with_all_checks() -> None:
    d = decide_promotion(0.96, 0.9, 0.01, ChampionRecord("2", 0.94)).to_dict()
    assert d["promote"] is True and d["champion_version"] == "2"
    assert len(d["checks"]) == 2 and d["required_accuracy"] == pytest.approx(0.95)


def test_required_accuracy() -> None:
    assert required_accuracy(0.9, 0.01, None) == 0.9
    assert required_accuracy(0.9, 0.01, ChampionRecord("1", 0.95)) == pytest.approx(0.96)
    assert required_accuracy(0.97, 0.01, ChampionRecord("1", 0.5)) == 0.97


def test_rejects_impossible_accuracy() -> None:
    with pytest.raises(ValueError, match="candidate score"):
        decide_promotion(1.5, 0.9, 0.0, None)


# --------------------------------------------------------------------------- human review


def _review(
    candidate: float,
    champion: ChampionRecord | None,
    policy: str = "borderline",
    noise: float = 0.01,
    margin: float = 0.005,
    cost: float | None = None,
    ratio: float = 1.5,
    target: float = 0.9,
    gain: float = 0.0,
) -> Any:
    decision = decide_promotion(candidate, target, gain, champion)
    return decision, review_request(
        decision,
        policy=policy,
        accuracy_noise=noise,
        margin=margin,
        candidate_cost=cost,
        max_cost_ratio=ratio,
    )


def test_never_policy_never_asks() -> None:
    _, review = _review(0.951, ChampionRecord("1", 0.95), policy="never")
    assert not review.required


def test_always_policy_asks_for_every_candidate_that_meets_the_target() -> None:
    assert _review(0.99, None, policy="always")[1].required
    assert not _review(0.80, None, policy="always")[1].required  # below target: no question


@pytest.mark.parametrize(
    ("candidate", "required"),
    [
        (0.951, True),  # gain +0.001, inside +/-0.01 noise: borderline pass
        (0.945, True),  # -0.005: borderline fail, a person may still promote
        (0.975, False),  # +0.025: clearly better
        (0.92, False),  # -0.03: clearly worse
    ],
)
def test_borderline_is_a_gain_within_the_evaluation_noise(candidate: float, required: bool) -> None:
    decision, review = _review(candidate, ChampionRecord("1", 0.95))
    assert review.required is required
    if required:
        assert "within the noise" in review.reasons[0]
        assert "95% CI half-width 0.0100" in review.reasons[0]


def test_borderline_band_is_the_larger_of_margin_and_noise() -> None:
    champ = ChampionRecord("1", 0.95)
    assert not _review(0.965, champ, noise=0.01, margin=0.0)[1].required
    assert _review(0.965, champ, noise=0.01, margin=0.02)[1].required


def test_no_champion_means_no_gain_to_doubt() -> None:
    assert not _review(0.905, None)[1].required


def test_costlier_model_that_would_be_promoted_is_borderline() -> None:
    champ = ChampionRecord("1", 0.90, cost=1000)
    decision, review = _review(0.99, champ, cost=4000, ratio=1.5)
    assert decision.promote and review.required
    assert "4.00x the champion's parameters" in review.reasons[0]
    assert not _review(0.99, champ, cost=1400, ratio=1.5)[1].required
    assert not _review(0.99, champ, cost=4000, ratio=0.0)[1].required  # rule off


def test_review_rejects_unknown_policy_and_negative_inputs() -> None:
    decision = decide_promotion(0.95, 0.9, 0.0, None)
    with pytest.raises(ValueError, match="review policy"):
        review_request(decision, policy="sometimes", accuracy_noise=0.0, margin=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        review_request(decision, policy="always", accuracy_noise=-1.0, margin=0.0)


@pytest.mark.parametrize(
    ("outcome", "promote", "detail"),
    [
        (ReviewOutcome(True, "alice"), True, "approved by alice"),
        (ReviewOutcome(False, "bob"), False, "rejected by bob"),
        (ReviewOutcome(True, None, timeout_s=60), False, "no answer within 60s: not promoted"),
    ],
)
def test_review_answer_makes_the_final_decision(
    outcome: ReviewOutcome, promote: bool, detail: str
) -> None:
    # A borderline fail that a person approves is promoted; a pass they reject is not.
    for candidate in (0.945, 0.955):
        decision = decide_promotion(candidate, 0.9, 0.0, ChampionRecord("1", 0.95))
        final = apply_review(decision, outcome)
        assert final.promote is promote
        assert final.alias == ("champion" if promote else "challenger")
        assert final.checks[-1].name == "human_review" and final.checks[-1].detail == detail
        assert final.checks[:-1] == decision.checks


def test_decision_round_trips_through_xcom_json() -> None:
    import json

    decision = decide_promotion(0.96, 0.9, 0.01, ChampionRecord("2", 0.94, cost=10.0))
    again = PromotionDecision.from_dict(json.loads(json.dumps(decision.to_dict())))
    assert again == decision


def test_final_decision_keeps_the_gate_when_nothing_changed() -> None:
    from policies import final_decision

    champ = ChampionRecord(version="1", accuracy=0.90)
    gate = decide_promotion(0.95, 0.9, 0.01, champ)
    same = final_decision(
        gate,
        candidate_accuracy=0.95,
        target_accuracy=0.9,
        min_gain_over_champion=0.01,
        champion_now=champ,
        review_required=False,
        review=None,
    )
    assert same == gate


def test_final_decision_applies_the_review_or_refuses_without_one() -> None:
    from policies import final_decision

    gate = decide_promotion(0.95, 0.9, 0.0, None)
    kw: dict[str, Any] = dict(
        candidate_accuracy=0.95,
        target_accuracy=0.9,
        min_gain_over_champion=0.0,
        champion_now=None,
        review_required=True,
    )
    assert final_decision(gate, review=ReviewOutcome(True, "ann"), **kw).promote
    rejected = final_decision(gate, review=ReviewOutcome(False, "bob"), **kw)
    assert not rejected.promote and "rejected by bob" in rejected.reasons[-1]
    with pytest.raises(ValueError, match="no answer was recorded"):
        final_decision(gate, review=None, **kw)


def test_final_decision_decides_again_when_the_champion_moved() -> None:
    from policies import final_decision

    gate = decide_promotion(0.95, 0.9, 0.01, ChampionRecord(version="1", accuracy=0.90))
    assert gate.promote
    moved = ChampionRecord(version="2", accuracy=0.96)  # another run promoted meanwhile
    again = final_decision(
        gate,
        candidate_accuracy=0.95,
        target_accuracy=0.9,
        min_gain_over_champion=0.01,
        champion_now=moved,
        review_required=False,
        review=None,
    )
    assert not again.promote and "champion v2" in " ".join(again.reasons)
    # an approval given for the old comparison does not count
    weaker = ChampionRecord(version="2", accuracy=0.80)
    reviewed = final_decision(
        gate,
        candidate_accuracy=0.95,
        target_accuracy=0.9,
        min_gain_over_champion=0.01,
        champion_now=weaker,
        review_required=True,
        review=ReviewOutcome(True, "ann"),
    )
    assert not reviewed.promote and "champion changed during the review" in reviewed.reasons[-1]
