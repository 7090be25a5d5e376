"""Feasibility, accuracy outlook, the PI deadline controller and the per-epoch decision.

All pure: time is passed in. The closed-loop tests drive the same policy code against a
plant (a model of a training job whose real speed differs from the calibration).
"""

from __future__ import annotations

import itertools
import math

import pytest

from policies import (
    DEADLINE_ALPHA,
    Action,
    ControllerState,
    EpochEstimate,
    EpochRecord,
    Outcome,
    StopReason,
    ThroughputModel,
    Verdict,
    after_epoch,
    assess_feasibility,
    assess_target,
    control_step,
    estimate_epochs_needed,
    fit_learning_curve,
    outcome,
    setpoint,
)

pytestmark = pytest.mark.unit

# 1 worker: 4 s/epoch, 2 workers: 2.5 s/epoch (sublinear), 10 s to (re)start.
CPU = ThroughputModel("cpu", {1: 4.0, 2: 2.5}, startup_s=10.0)


def _estimate(epochs: int, min_epochs: int | None = None, reachable: bool = True) -> EpochEstimate:
    return EpochEstimate(epochs, epochs if min_epochs is None else min_epochs, reachable, "test")


# --- throughput model -------------------------------------------------------------------------


def test_throughput_model_interpolates_with_amdahl() -> None:
    m = ThroughputModel("cpu", {1: 10.0, 2: 6.0}, startup_s=5)
    # t(n) = t1 (s + (1-s)/n): 10 = t1, 6 = 10 (s + (1-s)/2) -> s = 0.2
    assert m.serial_fraction() == pytest.approx(0.2)
    assert m.epoch_seconds(4) == pytest.approx(10 * (0.2 + 0.8 / 4))
    assert m.epoch_seconds(1) == 10.0


def test_throughput_model_single_point_uses_default_serial_fraction() -> None:
    m = ThroughputModel("cpu", {2: 6.0}, startup_s=5)
    assert m.epoch_seconds(4) < 6.0 < m.epoch_seconds(1)


@pytest.mark.parametrize("table", [{}, {0: 1.0}, {1: 0.0}, {2: -1.0}])
def test_throughput_model_rejects_bad_tables(table: dict[int, float]) -> None:
    with pytest.raises(ValueError):
        ThroughputModel("cpu", table, startup_s=1)


# --- feasibility ------------------------------------------------------------------------------


def _feas(**kw: object) -> object:
    args: dict[str, object] = dict(
        deadline_s=100.0,
        elapsed_s=0.0,
        max_workers=2,
        capacity={"cpu": 2},
        models=[CPU],
        estimate=_estimate(10),
    )
    args.update(kw)
    return assess_feasibility(**args)  # type: ignore[arg-type]


def test_feasible_contract_gets_fewest_workers() -> None:
    # 10 epochs: 1 worker 10 + 40 = 50 s <= 95 s, so one worker is enough.
    f = _feas()
    assert f.verdict is Verdict.FEASIBLE and f.workers == 1
    assert f.predicted_training_s == pytest.approx(50.0)


def test_tighter_deadline_needs_more_workers() -> None:
    f = _feas(deadline_s=40.0)  # 1 worker: 50 s > 38 s; 2 workers: 35 s <= 38 s
    assert f.verdict is Verdict.FEASIBLE and f.workers == 2


def test_cluster_binding_names_workers_finish_and_relaxation() -> None:
    # 4 workers would be needed; the budget allows 8 but the cluster has room for 2.
    f = _feas(deadline_s=30.0, max_workers=8, capacity={"cpu": 2}, now_unix=0.0)
    assert f.verdict is Verdict.INFEASIBLE and f.binding == "cluster"
    assert "needs" in f.message and "the cluster has room for 2" in f.message
    assert "00:00:35 UTC" in f.message  # earliest finish: 10 + 10 * 2.5 = 35 s
    relax = math.ceil(35 / DEADLINE_ALPHA - 30)
    assert any(f"relax deadline_s by {relax}s" in s for s in f.suggestions)


def test_budget_binding_suggests_raising_max_workers() -> None:
    f = _feas(deadline_s=30.0, max_workers=2, capacity={"cpu": 16})
    assert f.verdict is Verdict.INFEASIBLE and f.binding == "budget"
    assert f.suggestions[0].startswith("raise max_workers to ")


def test_deadline_binding_when_startup_alone_is_too_long() -> None:
    f = _feas(deadline_s=8.0, max_workers=64, capacity={"cpu": 64})
    assert f.verdict is Verdict.INFEASIBLE and f.binding == "deadline"


def test_deadline_already_past() -> None:
    f = _feas(deadline_s=100.0, elapsed_s=130.0)
    assert not f.feasible and f.binding == "deadline" and "passed 30s ago" in f.message


def test_zero_capacity_is_cluster_bound() -> None:
    f = _feas(capacity={"cpu": 0})
    assert not f.feasible and f.binding == "cluster"


def test_unreachable_target_from_history() -> None:
    f = _feas(estimate=_estimate(30, reachable=False))
    assert not f.feasible and f.binding == "target" and "relax target_value" in f.suggestions


def test_uncertain_plan_is_at_risk_not_rejected() -> None:
    # Without history 40 epochs are planned (110 s > 95 s) but only 1 is surely needed.
    f = _feas(estimate=_estimate(40, min_epochs=1))
    assert f.verdict is Verdict.AT_RISK and f.feasible and f.workers == 2


def test_gpu_shape_chosen_only_when_cheaper() -> None:
    gpu_fast_dear = ThroughputModel("gpu", {1: 0.5}, startup_s=15.0, price_per_worker_s=20.0)
    f = _feas(models=[CPU, gpu_fast_dear], capacity={"cpu": 2, "gpu": 1})
    assert f.shape == "cpu"  # CPU 1 x 40 = 40 worker-s < GPU 20 x 5 = 100
    gpu_cheap = ThroughputModel("gpu", {1: 0.5}, startup_s=15.0, price_per_worker_s=3.0)
    f = _feas(models=[CPU, gpu_cheap], capacity={"cpu": 2, "gpu": 1})
    assert f.shape == "gpu" and f.workers == 1
    f = _feas(models=[CPU, gpu_cheap], capacity={"cpu": 2, "gpu": 0})
    assert f.shape == "cpu"  # no GPU free: CPU plan


@pytest.mark.parametrize(
    ("deadline", "epochs", "cap"),
    list(itertools.product([5.0, 20.0, 40.0, 80.0, 400.0], [1, 5, 20, 60], [1, 2, 4])),
)
def test_feasibility_is_consistent_with_its_own_prediction(
    deadline: float, epochs: int, cap: int
) -> None:
    f = assess_feasibility(
        deadline_s=deadline,
        elapsed_s=0.0,
        max_workers=4,
        capacity={"cpu": cap},
        models=[CPU],
        estimate=_estimate(epochs),
    )
    if f.verdict is Verdict.FEASIBLE:
        assert 1 <= f.workers <= cap
        assert f.predicted_training_s <= DEADLINE_ALPHA * deadline + 1e-9
        # No smaller worker count fits (fewest workers).
        assert all(
            CPU.startup_s + epochs * CPU.epoch_seconds(n) > DEADLINE_ALPHA * deadline
            for n in range(1, f.workers)
        )
    else:
        assert f.earliest_finish_s > DEADLINE_ALPHA * deadline
        assert f.binding in {"cluster", "budget", "deadline"}


# --- accuracy outlook ---------------------------------------------------------------------


def _curve(a: float, b: float, n: int) -> list[float]:
    return [1 - a * e**-b for e in range(1, n + 1)]


def test_power_law_fit_recovers_parameters() -> None:
    fit = fit_learning_curve(_curve(0.5, 0.7, 8))
    assert fit is not None and fit.a == pytest.approx(0.5) and fit.b == pytest.approx(0.7)
    assert fit.epochs_to(1 - 0.5 * 20**-0.7) == pytest.approx(20)


def test_fit_needs_three_points() -> None:
    assert fit_learning_curve([0.5, 0.6]) is None


def test_on_track_curve_is_reachable() -> None:
    o = assess_target(_curve(0.5, 0.7, 5), target=1 - 0.5 * 12**-0.7, epochs_affordable=20)
    assert o.reachable and o.predicted_epochs_needed == pytest.approx(12, rel=1e-3)


def test_slow_curve_is_unreachable_within_budget() -> None:
    o = assess_target(_curve(0.5, 0.3, 6), target=0.95, epochs_affordable=15)
    assert not o.reachable and "affords 15" in o.detail


def test_plateau_is_unreachable() -> None:
    accs = [0.5, 0.7, 0.8, 0.8, 0.79, 0.8, 0.78, 0.79, 0.8, 0.79]
    o = assess_target(accs, target=0.95, epochs_affordable=100)
    assert not o.reachable and "plateau" in o.detail


def test_too_early_for_a_verdict() -> None:
    assert assess_target([0.1, 0.11, 0.12], target=0.99, epochs_affordable=3).reachable


def test_estimate_from_history() -> None:
    e = estimate_epochs_needed([[0.5, 0.8, 0.91], [0.4, 0.7, 0.85, 0.9, 0.92]], 0.9, 30)
    assert (e.epochs, e.min_epochs, e.reachable) == (4, 3, True)
    e = estimate_epochs_needed([[0.5, 0.6] + [0.7] * 28], 0.9, 30)
    assert not e.reachable
    e = estimate_epochs_needed([], 0.9, 30)
    assert (e.epochs, e.min_epochs, e.reachable) == (30, 1, True)


@pytest.mark.parametrize(
    ("reason", "best", "expected"),
    [
        (StopReason.TARGET_MET, 0.95, Outcome.TARGET_MET),
        (StopReason.DEADLINE_TRUNCATED, 0.95, Outcome.TARGET_MET),  # met before the deadline cut
        (StopReason.DEADLINE_TRUNCATED, 0.80, Outcome.DEADLINE_TRUNCATED),
        (StopReason.TARGET_UNREACHABLE, 0.80, Outcome.TARGET_UNREACHABLE),
        (StopReason.MAX_EPOCHS, 0.80, Outcome.TARGET_UNREACHABLE),
    ],
)
def test_outcome_labels(reason: StopReason, best: float, expected: Outcome) -> None:
    assert outcome(reason, best, 0.9) is expected


# --- controller ---------------------------------------------------------------------------


def test_setpoint_ramps_to_one_at_alpha_deadline() -> None:
    assert setpoint(10, 10, 100) == 0.0
    assert setpoint(10 + (95 - 10) / 2, 10, 100) == pytest.approx(0.5)
    assert setpoint(200, 10, 100) == 1.0


def test_controller_shrinks_when_one_worker_suffices() -> None:
    # 2 workers at 3 s/epoch, 2 of 40 epochs at t=15 s, deadline 300: 2 x 38 x 3 = 228
    # worker-s on 2, 10 + 38 x 4 = 162 on 1 (restart counted), and 1 worker ends in time.
    poor_scaling = ThroughputModel("cpu", {1: 4.0, 2: 3.0}, startup_s=10.0)
    d = control_step(
        now_s=15,
        deadline_s=300,
        epochs_done=2,
        epochs_planned=40,
        workers=2,
        max_workers=2,
        model=poor_scaling,
        state=ControllerState(ramp_start_s=10),
    )
    assert d.resize and d.workers == 1 and "wasteful" in d.reason


def test_controller_grows_when_behind() -> None:
    # 1 worker, 2 of 25 epochs at t=20 s, deadline 100: 23 x 4 = 92 s > 75 s left: behind.
    d = control_step(
        now_s=20,
        deadline_s=100,
        epochs_done=2,
        epochs_planned=25,
        workers=1,
        max_workers=2,
        model=CPU,
        state=ControllerState(ramp_start_s=10),
    )
    assert d.resize and d.workers == 2 and d.error > 0


def test_controller_keeps_workers_when_resize_does_not_pay() -> None:
    # Almost done: the restart would cost more than it saves.
    d = control_step(
        now_s=80,
        deadline_s=100,
        epochs_done=9,
        epochs_planned=10,
        workers=2,
        max_workers=2,
        model=CPU,
        state=ControllerState(ramp_start_s=10),
    )
    assert not d.resize and d.workers == 2


def test_controller_respects_cluster_cap() -> None:
    d = control_step(
        now_s=20,
        deadline_s=100,
        epochs_done=2,
        epochs_planned=40,
        workers=1,
        max_workers=1,
        model=CPU,
        state=ControllerState(ramp_start_s=10),
    )
    assert d.workers == 1 and not d.resize and "behind" in d.reason


def test_anti_windup_freezes_integral_while_saturated() -> None:
    s = ControllerState(integral=0.1, last_t=10, ramp_start_s=0)
    d = control_step(
        now_s=50,
        deadline_s=100,
        epochs_done=1,
        epochs_planned=40,
        workers=2,
        max_workers=2,
        model=CPU,
        state=s,
    )
    assert d.state.integral == pytest.approx(0.1)  # pinned at max workers while behind
    d = control_step(
        now_s=50,
        deadline_s=400,
        epochs_done=5,
        epochs_planned=40,
        workers=2,
        max_workers=4,
        model=CPU,
        state=s,
    )
    assert d.state.integral != pytest.approx(0.1)


def test_controller_state_round_trips() -> None:
    s = ControllerState(integral=0.2, last_t=3.0, ramp_start_s=1.0)
    assert ControllerState.from_dict(s.to_dict()) == s
    assert ControllerState.from_dict(None) == ControllerState()


@pytest.mark.parametrize(
    ("now", "done", "planned", "workers", "cap"),
    list(
        itertools.product([12.0, 30.0, 60.0, 90.0], [1, 5, 15], [10, 20, 40], [1, 2, 3], [1, 2, 4])
    ),
)
def test_controller_always_answers_within_bounds(
    now: float, done: int, planned: int, workers: int, cap: int
) -> None:
    d = control_step(
        now_s=now,
        deadline_s=100,
        epochs_done=done,
        epochs_planned=planned,
        workers=workers,
        max_workers=cap,
        model=CPU,
        state=ControllerState(ramp_start_s=10),
    )
    assert 1 <= d.workers <= max(cap, workers)
    assert d.resize == (d.workers != workers)
    assert abs(d.state.integral) <= 0.5


# --- closed loop: the policy drives a simulated job ---------------------------------------


def _run_loop(
    deadline: float,
    epochs_to_target: int,
    true_speedup: float,
    resize: bool,
    start_workers: int,
    cap: int = 4,
) -> tuple[float, float, StopReason]:
    """A job whose true epoch time differs from the calibration (CPU) by ``true_speedup``."""
    true = ThroughputModel(
        "cpu",
        {n: CPU.epoch_seconds(n) / true_speedup for n in range(1, 5)},
        startup_s=CPU.startup_s,
    )
    t, ws, workers = CPU.startup_s, 0.0, start_workers
    ws += workers * CPU.startup_s
    records: list[EpochRecord] = []
    state = ControllerState()
    first = True
    while True:
        dur = true.epoch_seconds(workers)
        t += dur
        ws += workers * dur
        e = len(records) + 1
        # A power-law curve that reaches 0.95 at epochs_to_target.
        acc = 1 - 0.5 * e ** -(math.log(10) / math.log(epochs_to_target))
        records.append(EpochRecord(e, workers, dur, acc, first_of_segment=first))
        first = False
        plan = after_epoch(
            now_s=t,
            deadline_s=deadline,
            records=records,
            max_epochs=200,
            stop_accuracy=0.95,
            workers=workers,
            max_workers=cap,
            model=CPU,
            state=state,
            prior_epochs=epochs_to_target,
            resize=resize,
        )
        state = plan.state
        if plan.action is Action.STOP:
            assert plan.stop_reason is not None
            return t, ws, plan.stop_reason
        if plan.action is Action.RESIZE:
            t += true.startup_s
            workers = plan.workers
            ws += workers * true.startup_s
            first = True


@pytest.mark.parametrize("speed", [0.8, 1.0, 1.25])
@pytest.mark.parametrize("deadline", [80.0, 150.0, 300.0])
def test_closed_loop_meets_deadline_with_fewer_worker_seconds(
    speed: float, deadline: float
) -> None:
    t, ws, reason = _run_loop(deadline, 20, speed, resize=True, start_workers=4)
    t_static, ws_static, _ = _run_loop(deadline, 20, speed, resize=False, start_workers=4)
    assert t <= deadline
    if reason is StopReason.TARGET_MET:
        assert ws <= ws_static * 1.0 + 1e-9


def test_closed_loop_loose_deadline_saves_at_least_a_quarter() -> None:
    _, ws, reason = _run_loop(300.0, 20, 1.0, resize=True, start_workers=4)
    _, ws_static, reason_static = _run_loop(300.0, 20, 1.0, resize=False, start_workers=4)
    assert reason is reason_static is StopReason.TARGET_MET
    assert ws <= 0.75 * ws_static
