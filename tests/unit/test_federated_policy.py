"""hyperFL's local-epochs control, client selection, FedAvg weights and the Dirichlet split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policies import (
    ContractError,
    EpochStrategy,
    FederatedBudget,
    RoundDecision,
    RoundRecord,
    RunContract,
    StopReason,
    client_epochs,
    fedavg_coefficients,
    next_round,
    reference_accuracy,
    select_clients,
)

pytestmark = pytest.mark.unit
BUDGET = FederatedBudget(rounds=10, clients_per_round=2, max_local_epochs=64)


def rounds(*points: tuple[int, float]) -> list[RoundRecord]:
    """Round 0 at accuracy 0.1, then (E, accuracy) per round with 2 participants."""
    out = [RoundRecord(0, 0, 0.1, 0)]
    for i, (e, acc) in enumerate(points, start=1):
        out.append(RoundRecord(i, e, acc, 2, seconds=1.0))
    return out


def decide(
    history: list[RoundRecord],
    strategy: str = "linear",
    target: float = 0.9,
    budget: FederatedBudget = BUDGET,
    **kw: float,
) -> RoundDecision:
    return next_round(
        strategy=strategy, history=history, target=target, budget=budget, static_epochs=2, **kw
    )


def test_first_round_uses_the_given_epochs_for_every_strategy() -> None:
    for strategy in EpochStrategy:
        d = decide(rounds(), strategy.value)
        assert not d.stop and d.local_epochs == 2


def test_linear_maps_the_needed_gain_through_the_last_two_rounds() -> None:
    # Round 1: E=2 took accuracy 0.1 -> 0.3 (0.1 accuracy per epoch). 9 rounds left, 0.6 to
    # go: 0.0667 per round -> ceil(0.667) = 1 epoch.
    d = decide(rounds((2, 0.3)))
    assert d.local_epochs == 1 and math.isclose(d.wanted_accuracy, 0.3 + 0.6 / 9)
    # Slower progress (E=2 gave +0.02, 100 epochs per unit accuracy) needs more epochs:
    # (0.9-0.12)/9 = 0.0867 -> 9, capped at 4x the last E (8).
    d = decide(rounds((2, 0.12)))
    assert d.local_epochs == 8
    d = decide(rounds((4, 0.2), (4, 0.22)), budget=FederatedBudget(10, 2, max_growth=100))
    # (0.9-0.22)/8 = 0.085 per round at 200 epochs per unit accuracy -> 17.
    assert d.local_epochs == 17


def test_no_progress_escalates_and_the_bounds_hold() -> None:
    d = decide(rounds((3, 0.5), (3, 0.48)))
    assert d.local_epochs == 6
    small = FederatedBudget(10, 2, max_local_epochs=5)
    assert decide(rounds((3, 0.5), (3, 0.48)), budget=small).local_epochs == 5
    # Already ahead of the pace: at least one epoch.
    assert decide(rounds((8, 0.85)), target=0.86).local_epochs >= 1


def test_quadratic_follows_its_reference_curve() -> None:
    assert reference_accuracy(0, 10, 0.9) == 0.0
    assert math.isclose(reference_accuracy(5, 10, 0.9), 0.72)
    assert math.isclose(reference_accuracy(10, 10, 0.9), 0.9)
    # Behind the curve early (0.2 after round 1, curve wants ~0.37 at round 2) -> more epochs
    # than the linear pace; ahead of it -> the minimum.
    behind = decide(rounds((2, 0.2)), "quadratic", budget=FederatedBudget(10, 2, max_growth=100))
    linear = decide(rounds((2, 0.2)), "linear", budget=FederatedBudget(10, 2, max_growth=100))
    assert behind.local_epochs > linear.local_epochs
    ahead = decide(rounds((2, 0.6)), "quadratic")
    assert ahead.local_epochs == 1


def test_static_keeps_its_epochs() -> None:
    for hist in (rounds((2, 0.3)), rounds((2, 0.3), (2, 0.29))):
        assert decide(hist, "static").local_epochs == 2


def test_stops_on_target_rounds_network_and_deadline() -> None:
    d = decide(rounds((2, 0.5), (2, 0.91)))
    assert d.stop and d.stop_reason is StopReason.TARGET_MET
    ten = rounds(*[(1, 0.2 + 0.01 * i) for i in range(10)])
    d = decide(ten)
    assert d.stop and d.stop_reason is StopReason.ROUNDS_EXHAUSTED
    net = FederatedBudget(rounds=10, clients_per_round=2, network_budget=7)
    three = rounds((1, 0.2), (1, 0.3), (1, 0.35))  # 6 participations: 1 left, a round needs 2
    d = decide(three, budget=net)
    assert d.stop and d.stop_reason is StopReason.BUDGET_EXHAUSTED
    assert decide(three, budget=FederatedBudget(10, 2, network_budget=8)).stop is False
    # Rounds take 1 s; at 94.5 s of a 100 s deadline another would cross 95%.
    d = decide(rounds((1, 0.2)), now_s=94.5, deadline_s=100.0)
    assert d.stop and d.stop_reason is StopReason.DEADLINE_TRUNCATED
    assert decide(rounds((1, 0.2)), now_s=90.0, deadline_s=100.0).stop is False


def test_network_budget_sets_the_pace_when_it_binds() -> None:
    # 20 participations at 2 per round buy 10 rounds; with 4 used, 8 rounds are left, not 19.
    net = FederatedBudget(rounds=20, clients_per_round=2, network_budget=20, max_growth=100)
    d = decide(rounds((2, 0.3), (2, 0.4)), budget=net)
    assert d.rounds_left == 8


def test_history_must_start_at_round_zero() -> None:
    with pytest.raises(ValueError, match="round 0"):
        decide([])


def test_client_selection_is_seeded_and_uses_live_clients_only() -> None:
    a = select_clients(range(10), 3, seed=7, round_no=4)
    assert a == select_clients(list(range(10)), 3, seed=7, round_no=4) and len(a) == 3
    picks = {tuple(select_clients(range(10), 3, seed=7, round_no=r)) for r in range(20)}
    assert len(picks) > 5  # rounds differ
    assert select_clients([1, 4], 3, seed=7, round_no=1) == [1, 4]
    assert set(select_clients([0, 2, 5, 9], 2, 1, 1)) <= {0, 2, 5, 9}


def test_fedavg_weights_by_samples() -> None:
    assert fedavg_coefficients([100, 300]) == [0.25, 0.75]
    with pytest.raises(ValueError):
        fedavg_coefficients([0, 0])
    assert client_epochs(rounds((2, 0.3), (5, 0.5))) == 14


def test_contract_rules_for_federated_mode() -> None:
    c = RunContract.from_dict(
        {"training_mode": "federated", "fl_clients": 4, "fl_clients_per_round": 4}
    )
    assert c.training_mode == "federated" and not c.tuning
    for raw, field in (
        ({"fl_clients": 3, "fl_clients_per_round": 4}, "fl_clients_per_round"),
        ({"tuning_trials": 4}, "tuning_trials"),
        ({"fl_local_epochs": 40, "fl_max_local_epochs": 32}, "fl_local_epochs"),
        ({"fl_network_budget": 2, "fl_clients_per_round": 3}, "fl_network_budget"),
        ({"fl_strategy": "cubic"}, "fl_strategy"),
    ):
        with pytest.raises(ContractError) as err:
            RunContract.from_dict({"training_mode": "federated", **raw})
        assert err.value.field == field and "Fix:" in str(err.value)
    with pytest.raises(ContractError, match="tuning_trials"):
        RunContract.from_dict({"training_mode": "tuning"})
    assert RunContract.from_dict({"tuning_trials": 3}).tuning  # centralized + trials = tuning


def test_dirichlet_split_covers_every_row_once_and_skews_with_alpha() -> None:
    from ray_jobs.federated import dirichlet_partition

    labels = np.repeat(np.arange(10), 100)
    skewed = dirichlet_partition(labels, 8, alpha=0.1, seed=3)
    near_iid = dirichlet_partition(labels, 8, alpha=100.0, seed=3)
    for parts in (skewed, near_iid):
        joined = np.sort(np.concatenate(parts))
        assert np.array_equal(joined, np.arange(len(labels)))
        assert min(len(p) for p in parts) >= 4

    def labels_per_client(parts: list[np.ndarray]) -> float:
        # Labels that make up 90% of a client's rows, averaged.
        out = []
        for p in parts:
            counts = np.sort(np.bincount(labels[p], minlength=10))[::-1]
            out.append(int(np.searchsorted(np.cumsum(counts) / counts.sum(), 0.9)) + 1)
        return float(np.mean(out))

    assert labels_per_client(skewed) < labels_per_client(near_iid) - 3
    with pytest.raises(ValueError, match="fl_clients"):
        dirichlet_partition(labels[:10], 8, alpha=0.5, seed=1)
