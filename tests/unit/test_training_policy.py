from __future__ import annotations

import pytest

from policies import DEADLINE_ALPHA, InfeasibleError, StopReason, next_epoch_decision, plan_workers

pytestmark = pytest.mark.unit


def test_plan_uses_max_workers_when_cluster_has_room() -> None:
    p = plan_workers(max_workers=2, cpus_per_worker=1.0, free_cpus=4.0)
    assert p.num_workers == 2 and "budget" in p.reason


def test_plan_shrinks_to_free_cpus() -> None:
    p = plan_workers(max_workers=8, cpus_per_worker=1.0, free_cpus=3.5)
    assert p.num_workers == 3 and "3.5 free CPUs" in p.reason


def test_plan_rejects_cluster_too_small_for_one_worker() -> None:
    with pytest.raises(InfeasibleError, match="needs 2 CPUs but the Ray cluster has 1.5 free"):
        plan_workers(max_workers=2, cpus_per_worker=2.0, free_cpus=1.5)


@pytest.mark.parametrize(("mw", "cpw"), [(0, 1.0), (1, 0.0)])
def test_plan_rejects_bad_arguments(mw: int, cpw: float) -> None:
    with pytest.raises(ValueError):
        plan_workers(max_workers=mw, cpus_per_worker=cpw, free_cpus=4)


def _decide(**kw: object) -> object:
    args = dict(
        elapsed_s=10.0,
        epoch_durations_s=[2.0],
        epochs_done=1,
        max_epochs=30,
        deadline_s=100.0,
        val_accuracy=0.5,
        stop_accuracy=0.9,
    )
    args.update(kw)
    return next_epoch_decision(**args)  # type: ignore[arg-type]


def test_continues_while_target_unmet_and_time_left() -> None:
    d = _decide()
    assert d.run_next and d.stop_reason is None and d.eta_s == pytest.approx(12.0)


def test_stops_when_target_met() -> None:
    d = _decide(val_accuracy=0.9)
    assert not d.run_next and d.stop_reason is StopReason.TARGET_MET


def test_stops_at_max_epochs() -> None:
    d = _decide(epochs_done=30)
    assert not d.run_next and d.stop_reason is StopReason.MAX_EPOCHS


def test_stops_before_an_epoch_that_would_cross_the_deadline() -> None:
    budget = DEADLINE_ALPHA * 100.0
    assert _decide(elapsed_s=budget - 2.5, epoch_durations_s=[2.0]).run_next
    d = _decide(elapsed_s=budget - 1.5, epoch_durations_s=[2.0])
    assert not d.run_next and d.stop_reason is StopReason.DEADLINE_TRUNCATED
    assert "deadline" in d.detail


def test_predicts_with_the_slowest_recent_epoch() -> None:
    d = _decide(epoch_durations_s=[9.0, 1.0, 5.0, 2.0])  # last three: 1, 5, 2
    assert d.predicted_next_epoch_s == 5.0


def test_target_met_wins_over_deadline() -> None:
    d = _decide(elapsed_s=99.0, val_accuracy=0.95)
    assert d.stop_reason is StopReason.TARGET_MET


@pytest.mark.parametrize(
    ("val", "elapsed", "expected"),
    [
        (0.95, 50.0, StopReason.TARGET_MET),
        (0.95, 150.0, StopReason.TARGET_MET),  # reaching the target counts even when late
        (0.90, 50.0, StopReason.TARGET_MET),  # the stop accuracy itself is enough
        (0.80, 150.0, StopReason.DEADLINE_TRUNCATED),
        (0.80, 100.0, StopReason.MAX_EPOCHS),  # on the deadline is not past it
        (0.80, 50.0, StopReason.MAX_EPOCHS),
    ],
)
def test_a_one_shot_fit_is_labelled_by_target_then_deadline(
    val: float, elapsed: float, expected: StopReason
) -> None:
    from policies import single_fit_stop_reason

    assert single_fit_stop_reason(val, 0.9, elapsed, 100.0) is expected
