from __future__ import annotations

import pytest

from policies import (
    CHALLENGER,
    CHAMPION,
    ChampionRecord,
    decide_promotion,
    required_accuracy,
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
    with pytest.raises(ValueError, match="candidate_accuracy"):
        decide_promotion(1.5, 0.9, 0.0, None)
