"""dynaSpark's planning, feasibility, PI loop and arbiter, with time passed in."""

from __future__ import annotations

import math

import pytest

from policies import (
    ArbiterPolicy,
    StageController,
    StageProfile,
    arbitrate,
    assess_spark_deadline,
    cores_for,
    plan_stage,
    stage_deadline,
    stage_weight,
)

pytestmark = pytest.mark.unit

# Three stages: 1-core profiled times 40 s, 120 s, 20 s; 16 tasks each.
APP = [
    StageProfile("read", 40_000, 1000.0, tasks=16),
    StageProfile("transform", 60_000, 500.0, tasks=16),
    StageProfile("write", 10_000, 500.0, tasks=16),
]


def run_stage(
    stage: StageProfile,
    deadline_s: float,
    planned: int,
    max_cores: int,
    speed: float,
    control: bool,
    period_s: float = 1.0,
) -> tuple[float, float]:
    """Simulate one stage whose true rate is ``speed`` x the profile: (seconds, core-seconds)."""
    ctl = StageController(planned, deadline_s, max_cores)
    done, t, core_s, cores = 0.0, 0.0, 0.0, float(planned)
    while done < 1.0 and t < 10 * deadline_s:
        step = min(period_s, (1.0 - done) * stage.core_seconds / (speed * math.ceil(cores)))
        done += step * speed * math.ceil(cores) / stage.core_seconds
        core_s += step * math.ceil(cores)
        t += step
        if control:
            cores = ctl.update(t, done, period_s)
    return t, core_s


def test_stage_weight_is_dynasparks_formula() -> None:
    # beta * stages_left + (1 - beta) * (remaining / this - 1)
    assert stage_weight(2, 180.0, 40.0, beta=0.33) == pytest.approx(0.66 + 0.67 * 3.5)
    assert stage_weight(0, 20.0, 20.0) == 0.0  # the last stage gets all the time left
    assert stage_deadline(100.0, 0.0) == 100.0
    assert stage_deadline(100.0, 3.0) == 25.0
    assert stage_deadline(-5.0, 1.0) == 0.0


def test_cores_are_the_ceiling_of_work_over_deadline_within_bounds() -> None:
    s = StageProfile("s", 10_000, 100.0, tasks=8)  # 100 core-seconds
    assert cores_for(s, 100.0, 16, overscale=1.0) == 1
    assert cores_for(s, 30.0, 16, overscale=1.0) == 4  # ceil(3.33)
    assert cores_for(s, 30.0, 16, overscale=1.1) == 4  # ceil(3.67)
    assert cores_for(s, 10.0, 16) == 8  # capped by tasks
    assert cores_for(s, 10.0, 3) == 3  # capped by the cluster
    assert cores_for(s, 0.0, 16) == 8  # no time: everything it can use


def test_plan_executed_as_profiled_ends_before_alpha_deadline_with_few_cores() -> None:
    for deadline in (30.0, 60.0, 120.0, 240.0, 600.0):
        now, cores_used = 0.0, []
        for i, stage in enumerate(APP):
            plan = plan_stage(APP, i, now, deadline, max_cores=16)
            now += stage.seconds(plan.cores)
            cores_used.append(plan.cores)
        assert now <= 0.95 * deadline + 1e-6, (deadline, now, cores_used)
        # Not as fast as possible: the loosest deadline uses a single core.
        if deadline == 600.0:
            assert cores_used == [1, 1, 1]
    # A tighter deadline never gets fewer cores.
    tight = [plan_stage(APP, 0, 0.0, d, 16).cores for d in (30.0, 60.0, 120.0)]
    assert tight == sorted(tight, reverse=True)


def test_later_stages_catch_up_when_an_earlier_stage_ran_late() -> None:
    on_time = plan_stage(APP, 1, 20.0, 120.0, 16)
    late = plan_stage(APP, 1, 70.0, 120.0, 16)
    assert late.deadline_s < on_time.deadline_s and late.cores > on_time.cores


def test_feasibility_names_the_binding_constraint_and_the_fix() -> None:
    ok = assess_spark_deadline(APP, 60.0, max_cores=16)
    assert ok.feasible and ok.binding is None
    cores = assess_spark_deadline(APP, 20.0, max_cores=4)
    assert not cores.feasible and cores.binding == "cores"
    assert "needs 10 cores, the cluster gives 4" in cores.message  # ceil(180 / 19)
    assert cores.min_seconds == pytest.approx(180.0 / 4)
    deadline = assess_spark_deadline(APP, 10.0, max_cores=16)
    assert not deadline.feasible and deadline.binding == "deadline"
    assert "relax the deadline to at least 11.9s" in deadline.message  # 11.84 s up
    past = assess_spark_deadline(APP, 0.0, max_cores=16)
    assert not past.feasible and "in the future" in past.message


@pytest.mark.parametrize("deadline_s", [0.5, 4.47, 10.0, 20.0, 33.3, 47.0])
@pytest.mark.parametrize("max_cores", [1, 2, 4, 16])
def test_the_advised_deadline_is_itself_feasible(deadline_s: float, max_cores: int) -> None:
    import re

    verdict = assess_spark_deadline(APP, deadline_s, max_cores=max_cores)
    if verdict.feasible:
        return
    advised = float(re.findall(r"relax the deadline to at least ([0-9.]+)s", verdict.message)[0])
    assert advised > deadline_s
    if verdict.binding == "cores":  # on the cores the cluster has
        assert assess_spark_deadline(APP, advised, max_cores=max_cores).feasible
    else:  # with a core per task
        assert assess_spark_deadline(APP, advised, max_cores=16).feasible


def test_bad_profiles_are_refused_with_the_field() -> None:
    with pytest.raises(ValueError, match="nominal_rate"):
        StageProfile("x", 10, 0.0)
    with pytest.raises(ValueError, match="records"):
        StageProfile("x", -1, 1.0)
    with pytest.raises(ValueError, match="max_cores"):
        assess_spark_deadline(APP, 10.0, max_cores=0)


def test_controller_adds_cores_when_behind_and_removes_when_ahead() -> None:
    behind = StageController(4, 100.0, 16)
    assert behind.update(50.0, 0.30, 1.0) > 4
    ahead = StageController(4, 100.0, 16)
    assert ahead.update(50.0, 0.70, 1.0) < 4
    on = StageController(4, 100.0, 16)
    assert on.update(47.5, 0.50, 1.0) == 4  # on the ramp (it ends at 95 s)
    late = StageController(4, 100.0, 16)
    assert late.update(120.0, 0.9, 1.0) > 4  # past its deadline: pushes until done


def test_anti_windup_lets_the_output_leave_saturation_at_once() -> None:
    ctl = StageController(4, 100.0, 8)
    for t in range(1, 60):  # far behind for a minute: saturated at the top
        ctl.update(float(t), 0.0, 1.0)
    assert ctl.cores == 8
    # Caught up and ahead: without anti-windup the integral would hold it at 8.
    assert ctl.update(60.0, 0.75, 1.0) < 8


def test_control_loop_meets_the_stage_deadline_when_the_profile_is_optimistic() -> None:
    stage = StageProfile("transform", 60_000, 500.0, tasks=32)  # 120 core-seconds
    deadline = 40.0
    planned = cores_for(stage, deadline, 32, overscale=1.0)  # 3 cores
    static_t, _ = run_stage(stage, deadline, planned, 32, speed=0.7, control=False)
    pi_t, pi_cs = run_stage(stage, deadline, planned, 32, speed=0.7, control=True)
    assert static_t > deadline  # 30% slower than profiled: the plan alone is late
    assert pi_t <= deadline
    # And with an accurate profile it stays near the plan instead of grabbing cores.
    ok_t, ok_cs = run_stage(stage, deadline, planned, 32, speed=1.0, control=True)
    assert ok_t <= deadline and ok_cs <= 1.15 * stage.core_seconds


def test_arbiter_gives_demands_when_they_fit_else_splits_by_policy() -> None:
    demands, deadlines = {"a": 6.0, "b": 4.0}, {"a": 300.0, "b": 100.0}
    assert arbitrate(demands, deadlines, 16) == demands
    prop = arbitrate(demands, deadlines, 5, ArbiterPolicy.PROPORTIONAL)
    assert prop == pytest.approx({"a": 3.0, "b": 2.0})
    edf = arbitrate(demands, deadlines, 5, "edf")
    assert edf == pytest.approx({"b": 4.0, "a": 1.0})
    assert sum(arbitrate({"x": 9.0, "y": 9.0}, {}, 10, "edf").values()) == 10
