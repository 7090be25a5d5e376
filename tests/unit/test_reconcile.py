"""``policies.reconcile_action``: when ml_reconcile serves the champion again, and when not."""

from __future__ import annotations

import itertools

import pytest

from policies import (
    DEPLOY_GRACE_S,
    INTENT_DEPLOYING,
    INTENT_FAILED,
    INTENT_OFF,
    INTENT_SERVING,
    ServingIntent,
    reconcile_action,
)

pytestmark = pytest.mark.unit
NOW = 1_000_000.0


def intent(state: str, version: str = "2", age_s: float = 10.0) -> ServingIntent:
    return ServingIntent(state, version, "ml_lifecycle/run-1", NOW - age_s)


def act(champion: str | None, served: str | None, **kw: object) -> tuple[bool, str]:
    args = {"canary_candidate": None, "intent": None, "now": NOW, **kw}
    action = reconcile_action(champion=champion, served=served, **args)  # type: ignore[arg-type]
    assert action.version == (champion if action.serve else None)
    return action.serve, action.reason


def test_in_step_means_nothing_to_do() -> None:
    assert act("2", "2", intent=intent(INTENT_SERVING)) == (
        False,
        "v2 serves: in step with the registry",
    )


def test_a_lost_endpoint_serves_the_champion_again() -> None:
    serve, reason = act("2", None, intent=intent(INTENT_SERVING, age_s=86_400))
    assert serve and "nothing answers at the endpoint" in reason and reason.endswith("serve v2")


def test_a_deploy_that_failed_after_the_promote_is_repaired_at_once() -> None:
    serve, reason = act("3", "2", intent=intent(INTENT_FAILED, "3", age_s=5))
    assert serve and "v2 serves but champion is v3" in reason and "failed" in reason


def test_a_deploy_in_progress_is_left_to_finish_then_taken_as_abandoned() -> None:
    young = intent(INTENT_DEPLOYING, "3", age_s=DEPLOY_GRACE_S - 1)
    serve, reason = act("3", "2", intent=young, canary_candidate="3")
    assert not serve and "left to finish" in reason
    old = intent(INTENT_DEPLOYING, "3", age_s=DEPLOY_GRACE_S + 1)
    serve, reason = act("3", "2", intent=old, canary_candidate="3")
    assert serve and "never ended" in reason


def test_a_model_taken_off_on_purpose_stays_off() -> None:
    assert act("2", None, intent=intent(INTENT_OFF))[0] is False


def test_no_champion_moves_nothing() -> None:
    assert act(None, "2")[0] is False and act(None, None)[0] is False


def test_a_canary_nobody_recorded_is_left_alone_but_a_finished_deploys_leftover_is_not() -> None:
    assert act("2", "2", canary_candidate="3")[0] is False
    serve, reason = act("2", "2", canary_candidate="3", intent=intent(INTENT_SERVING, "2"))
    assert serve and "left half-way" in reason


def test_an_alias_moved_by_hand_with_no_intent_is_repaired() -> None:
    serve, reason = act("1", "2")
    assert serve and "v2 serves but champion is v1" in reason


STATES = [None, INTENT_DEPLOYING, INTENT_SERVING, INTENT_FAILED, INTENT_OFF]


@pytest.mark.parametrize(
    ("champion", "served", "candidate", "state", "age"),
    list(
        itertools.product(
            [None, "1", "2"], [None, "1", "2"], [None, "2", "3"], STATES, [0.0, 2 * DEPLOY_GRACE_S]
        )
    ),
)
def test_every_case_has_a_reason_and_serves_only_the_champion_when_allowed(
    champion: str | None, served: str | None, candidate: str | None, state: str | None, age: float
) -> None:
    recorded = None if state is None else intent(state, "2", age_s=age)
    serve, reason = act(champion, served, canary_candidate=candidate, intent=recorded)
    assert reason
    if serve:  # never against an explicit "off", a fresh deploy, or with no champion
        assert champion is not None and state != INTENT_OFF
        assert not (state == INTENT_DEPLOYING and age < DEPLOY_GRACE_S)
        assert served != champion or candidate is not None
    elif champion is not None and state in (INTENT_SERVING, INTENT_FAILED):
        # recorded, not in progress, not off: only "in step" is left alone
        assert served == champion and candidate is None


def test_an_unknown_intent_state_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown serving intent"):
        ServingIntent("paused", "1", "x", 0.0)
