"""dynaSpark on a real Spark standalone master and worker (started here with pyspark's own
classes, no Docker): a profile measured from Spark's REST API, then the same work under a
deadline with the controller resizing the running application's executors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

CORES, DRIVER_UI = 3, 4190


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from slaflow.spark_standalone import SparkStandalone

    # With the worker's shuffle service, so that released executors keep their shuffle output.
    with SparkStandalone(
        tmp_path_factory.mktemp("spark-standalone"), cores=CORES, shuffle_port=7397
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def spark(standalone: Any) -> Iterator[Any]:
    from operators.hooks import SparkHook

    # The hook stops the process's local session first: getOrCreate would hand that back.
    conf = {
        **standalone.app_conf(),
        "spark.executor.cores": "1",
        "spark.executor.memory": "512m",
        "spark.cores.max": str(CORES),
        "spark.ui.port": str(DRIVER_UI),
        "spark.dynamicAllocation.enabled": "false",
        "spark.sql.adaptive.enabled": "false",
        "spark.sql.shuffle.partitions": "12",
    }
    session = SparkHook().session(
        "slaflow-test-spark-deadline", master=standalone.master_url, conf=conf
    )
    assert session.sparkContext.master == standalone.master_url
    try:
        yield session
    finally:
        session.stop()


def _work(spark: Any) -> int:
    """Two stages: 12 tasks of which the first is a 3 s straggler, then a shuffle.

    The straggler makes the run's shape deterministic: while it runs, the other executors sit
    idle for about two seconds, so a shrink always has idle executors to release (the
    actuator never kills a running task), whatever the machine's speed.
    """
    import time as _time
    from operator import add

    def partition(index: int, rows: Any) -> Any:
        _time.sleep(3.0 if index == 0 else 0.2)
        return ((x % 1000, x) for x in rows)

    return len(
        spark.sparkContext.parallelize(range(12_000), 12)
        .mapPartitionsWithIndex(partition)
        .reduceByKey(add)
        .collect()
    )


def _wait_executors(actuator: Any, n: int, timeout_s: float = 60) -> None:
    end = time.monotonic() + timeout_s
    while len(actuator.executors()) != n:
        assert time.monotonic() < end, f"executors {len(actuator.executors())} != {n}"
        time.sleep(0.5)


def test_controller_resizes_a_running_application_to_meet_the_deadline(
    spark: Any, tmp_path: Path
) -> None:
    from spark_jobs.deadline import (
        DeadlineController,
        ExecutorActuator,
        SparkDeadlineInfeasible,
        completed_stages,
        last_stage_id,
        load_profile,
        profile_from_stages,
        save_profile,
    )

    sc = spark.sparkContext
    actuator = ExecutorActuator(sc)
    assert actuator.resizable and actuator.releases
    actuator.set_cores(CORES)
    _wait_executors(actuator, CORES)
    _work(spark)  # warm-up: JIT, shuffle service, Python workers

    # Profile: all the cores, metrics from Spark's own REST API.
    before = last_stage_id(sc)
    t = time.monotonic()
    assert _work(spark) == 1000
    profiled_s = time.monotonic() - t
    stages = completed_stages(sc, before)
    assert len(stages) >= 2 and stages[0]["numTasks"] == 12
    assert stages[0]["executorRunTime"] >= 5000  # 3 s + 11 x 0.2 s of task time
    profile = profile_from_stages(stages, CORES)
    path = tmp_path / "profiles" / "work.json"
    save_profile(path, profile, {"cores": CORES})
    assert load_profile(path) == profile

    # An impossible deadline is refused before anything runs.
    after_profile = last_stage_id(sc)
    with pytest.raises(SparkDeadlineInfeasible, match="relax the deadline"):
        with DeadlineController(sc, profile, 0.2 * profiled_s, CORES):
            pytest.fail("the work must not start")
    assert last_stage_id(sc) == after_profile  # no stage ran

    # 3x slack: the controller needs fewer executors than the profile run held.
    deadline_s = 3.0 * profiled_s
    lines: list[str] = []
    with DeadlineController(sc, profile, deadline_s, CORES, period_s=0.5, log=lines.append) as ctl:
        assert _work(spark) == 1000
    assert ctl.elapsed_s <= deadline_s, (ctl.elapsed_s, deadline_s, ctl.timeline)
    assert ctl.stage_plans and min(p["cores"] for p in ctl.stage_plans) < CORES
    held = [r["held"] for r in ctl.timeline]
    assert held and min(held) < CORES, ctl.timeline  # executors were really released
    assert ctl.core_seconds() < CORES * ctl.elapsed_s
    assert any("spark stage" in line for line in lines)


def test_first_run_profiles_the_job_and_the_next_is_controlled(spark: Any, tmp_path: Path) -> None:
    from spark_jobs.deadline import SparkDeadlineInfeasible, load_profile, run_with_deadline

    path = tmp_path / "job.json"
    lines: list[str] = []
    result, first = run_with_deadline(
        spark,
        lambda: _work(spark),
        deadline_s=600,
        max_cores=CORES,
        profile_path=path,
        log=lines.append,
    )
    assert result == 1000 and first["mode"] == "profiling" and first["met"]
    assert first["profiled_stages"] >= 2 and load_profile(path)
    assert any("this run profiles it" in line for line in lines)

    result, second = run_with_deadline(
        spark,
        lambda: _work(spark),
        deadline_s=3 * first["elapsed_s"],
        max_cores=CORES,
        profile_path=path,
        period_s=0.5,
        log=lines.append,
    )
    assert result == 1000 and second["mode"] == "controlled" and second["met"], second
    assert second["core_seconds"] < first["core_seconds"] * 3
    assert second["feasibility"]["feasible"] and second["stage_plans"]

    # Too tight: refused (nothing runs) unless the contract says best effort.
    with pytest.raises(SparkDeadlineInfeasible, match="relax the deadline"):
        run_with_deadline(
            spark,
            lambda: pytest.fail("must not run"),
            deadline_s=0.1,
            max_cores=CORES,
            profile_path=path,
        )
    result, third = run_with_deadline(
        spark,
        lambda: _work(spark),
        deadline_s=0.1,
        max_cores=CORES,
        profile_path=path,
        on_infeasible="best_effort",
    )
    assert result == 1000 and third["mode"] == "best_effort" and not third["met"]
