"""The run plan (the contract validated once) and the training decisions moved out of the
operators: early-stop accuracy, worker counts, deadline met."""

from __future__ import annotations

from typing import Any

import pytest

from policies import (
    ChampionRecord,
    InfeasibleError,
    RunContract,
    RunPlan,
    ServedDeployment,
    ServingFootprint,
    calibration_worker_counts,
    cluster_capacity,
    deadline_met,
    early_stop_accuracy,
    plan_workers,
    size_training,
)

pytestmark = pytest.mark.unit


def test_run_plan_round_trips_without_validating_again(monkeypatch: pytest.MonkeyPatch) -> None:
    contract = RunContract.from_dict({"hidden_units": [16, 8], "model_name": "m"})
    plan = RunPlan.make(
        contract,
        run_key="k",
        champion=ChampionRecord("3", 0.9, 1234.0),
        num_workers=2,
        worker_reason="r",
    )
    assert plan.stop_accuracy == pytest.approx(0.93)
    import policies._contract as c

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("validated again")

    monkeypatch.setattr(c, "_validate", boom)
    again = RunPlan.from_dict(plan.to_dict())
    assert again == plan and again.contract.hidden_units == (16, 8)


def test_early_stop_accuracy_is_what_the_gate_needs_plus_the_margin_capped() -> None:
    assert early_stop_accuracy(stop_margin=0.03, required=0.9) == pytest.approx(0.93)
    assert early_stop_accuracy(stop_margin=0.03, required=0.99) == 0.999


def test_deadline_met_is_inclusive() -> None:
    assert deadline_met(600.0, 600.0) and not deadline_met(600.01, 600.0)


def test_capacity_per_shape() -> None:
    assert cluster_capacity(free_cpus=3.5, cpus_per_worker=1.0) == {"cpu": 3}
    assert cluster_capacity(free_cpus=3.0, cpus_per_worker=1.0, free_gpus=2.0) == {
        "cpu": 3,
        "gpu": 2,
    }
    assert cluster_capacity(free_cpus=0.9, cpus_per_worker=1.0, free_gpus=1.0) == {
        "cpu": 0,
        "gpu": 0,
    }


@pytest.mark.parametrize(
    ("max_workers", "capacity", "counts"),
    [(2, 4, [1, 2]), (8, 4, [1, 2, 4]), (1, 4, [1]), (4, 0, []), (4, 1, [1])],
)
def test_calibration_measures_one_two_and_the_most_usable(
    max_workers: int, capacity: int, counts: list[int]
) -> None:
    assert calibration_worker_counts(max_workers, capacity) == counts


def test_size_training_per_policy_and_verdict() -> None:
    kw = dict(planned_workers=1, max_workers=4, capacity=3)
    assert size_training(feasible=True, resize_policy="deadline", **kw).workers == 1
    assert size_training(feasible=True, resize_policy="static", **kw).workers == 3
    best_effort = size_training(feasible=False, resize_policy="deadline", **kw)
    assert best_effort.workers == 3 and "anyway" in best_effort.reason
    assert (
        size_training(
            feasible=True, resize_policy="deadline", planned_workers=9, max_workers=4, capacity=3
        ).workers
        == 3
    )


def test_plan_workers_names_what_served_models_hold() -> None:
    serving = ServingFootprint.of([ServedDeployment("digits+v1", "warm", 3, 1.0)])
    with pytest.raises(
        InfeasibleError,
        match=r"0\.5 free; served models hold 3 CPU: "
        r"digits 3 CPU \(v1 warm 3x1\).*make undeploy",
    ):
        plan_workers(2, 1.0, 0.5, serving=serving)


def test_calibration_measures_one_worker_first_and_more_only_when_it_is_too_slow() -> None:
    from policies import ThroughputModel, next_calibration

    kw = dict(epochs=20.0, max_workers=4, capacity=4)
    assert next_calibration(None, deadline_s=600, **kw) == [1]
    fast = ThroughputModel("cpu", {1: 2.0}, startup_s=20.0)
    assert next_calibration(fast, deadline_s=600, **kw) == []  # 20 + 23 x 2 s fits easily
    assert next_calibration(fast, deadline_s=60, **kw) == [2, 4]
    # a deadline the start-up alone overruns: more workers cannot help, measure nothing more
    assert next_calibration(fast, deadline_s=15, **kw) == []
    both = ThroughputModel("cpu", {1: 2.0, 2: 1.2, 4: 0.9}, startup_s=20.0)
    assert next_calibration(both, deadline_s=60, **kw) == []
    assert next_calibration(None, deadline_s=600, epochs=20.0, max_workers=4, capacity=0) == []


def test_checkpoints_every_ten_seconds_and_always_at_a_stop_or_resize() -> None:
    from policies import checkpoint_due

    assert checkpoint_due(now_s=3.0, last_checkpoint_s=None, action="continue")
    assert not checkpoint_due(now_s=9.0, last_checkpoint_s=3.0, action="continue")
    assert checkpoint_due(now_s=13.0, last_checkpoint_s=3.0, action="continue")
    assert checkpoint_due(now_s=4.0, last_checkpoint_s=3.0, action="stop")
    assert checkpoint_due(now_s=4.0, last_checkpoint_s=3.0, action="resize")


def test_prepared_splits_are_keyed_by_content_settings_and_code(tmp_path: Any) -> None:
    import os

    from spark_jobs.prepare import reuse_key

    data = tmp_path / "d.csv"
    data.write_text("a,label\n1,0\n2,1\n")
    kw = dict(label_column="label", validation_fraction=0.15, test_fraction=0.15, seed=1)
    key = reuse_key(source=str(data), **kw)  # type: ignore[arg-type]
    assert key and key == reuse_key(source=f"file://{data}", **kw)  # type: ignore[arg-type]
    assert reuse_key(source=str(data), **{**kw, "seed": 2}) != key  # type: ignore[arg-type]
    os.utime(data, ns=(1, 1))  # a rewritten file: prepared again
    assert reuse_key(source=str(data), **kw) != key  # type: ignore[arg-type]
    assert reuse_key(source="s3://bucket/d.csv", **kw) is None  # type: ignore[arg-type]
    assert reuse_key(source="sklearn:digits", **kw)  # type: ignore[arg-type]
