"""Run Spark work under a deadline: dynaSpark's policy applied to a live SparkContext.

- **Profile** from Spark itself: after a run, the driver's REST API
  (``/api/v1/applications/<id>/stages``) gives each completed stage's records, tasks and
  executor run time; ``profile_from_stages`` turns that into ``StageProfile``s (nominal rate =
  records per second of executor time, i.e. per core), stored as JSON for reuse.
- **Control**: ``DeadlineController`` checks the profile against the deadline before anything
  runs (``SparkDeadlineInfeasible`` names the binding constraint), then every ``period_s``
  reads the status tracker (tasks done of the running stage), plans each stage when it starts
  (``policies.plan_stage``) and moves the cores with the PI loop (``StageController``).
- **Actuation** through what Spark offers: on a standalone (or any coarse-grained) master,
  executors of one core each, grown with ``requestTotalExecutors`` and shrunk by killing idle
  executors; ``local[*]`` cannot change its cores, so there the controller only records.

The policy is in ``policies/_spark_deadline.py``; this is the adapter.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from policies import (
    SparkFeasibility,
    StageController,
    StageProfile,
    assess_spark_deadline,
    plan_stage,
)

T = TypeVar("T")


class SparkDeadlineInfeasible(RuntimeError):
    """The profile says the deadline cannot be met; nothing was run."""

    def __init__(self, verdict: SparkFeasibility) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


def _rest(sc: Any, path: str, attempts: int = 3, timeout_s: float = 30.0) -> Any:
    """GET the driver's REST API. Its first answer can take seconds on a busy machine (the
    UI's JAX-RS stack starts on the first request), so a slow or failed call is retried."""
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/{path}"
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                return json.load(resp)
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def completed_stages(sc: Any, after_stage: int = -1) -> list[dict[str, Any]]:
    """Completed stages with an id above ``after_stage``, oldest first (skipped ones left out:
    their work was reused, not done)."""
    stages = [s for s in _rest(sc, "stages?status=complete") if s["stageId"] > after_stage]
    return sorted(stages, key=lambda s: s["stageId"])


def last_stage_id(sc: Any) -> int:
    ids = [s["stageId"] for s in _rest(sc, "stages")]
    return max(ids, default=-1)


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.strptime(value.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def profile_from_stages(stages: Sequence[dict[str, Any]], cores: int) -> list[StageProfile]:
    """Nominal rates from a run on ``cores`` cores: records per second of executor time."""
    out = []
    for s in stages:
        records = max(
            int(s.get("inputRecords", 0)) + int(s.get("shuffleReadRecords", 0)), int(s["numTasks"])
        )
        work_s = max(float(s.get("executorRunTime", 0)) / 1000.0, 1e-3)
        wall_s = (
            _ts(s["completionTime"]) - _ts(s["submissionTime"])
            if s.get("completionTime") and s.get("submissionTime")
            else work_s
        )
        parallel = max(1, min(cores, int(s["numTasks"])))
        out.append(
            StageProfile(
                f"stage{s['stageId']}:{s.get('name', '')[:40]}",
                records,
                records / work_s,
                tasks=int(s["numTasks"]),
                overhead_s=max(0.0, wall_s - work_s / parallel),
            )
        )
    return out


def stage_offsets(stages: Sequence[dict[str, Any]], first_stage_id: int) -> list[int]:
    """Each profiled stage's place in the application's run: its id minus the run's first id.

    Spark numbers every stage of a run, skipped ones included, so the same work run again has
    the same offsets; that matches stages even when the monitor misses a short one."""
    return [int(s["stageId"]) - first_stage_id for s in stages]


def save_profile(path: Path, stages: Sequence[StageProfile], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "name": s.name,
            "records": s.records,
            "nominal_rate": s.nominal_rate,
            "tasks": s.tasks,
            "overhead_s": s.overhead_s,
        }
        for s in stages
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "stages": rows}, indent=1))
    tmp.replace(path)


def load_profile(path: Path) -> list[StageProfile] | None:
    if not path.exists():
        return None
    return [StageProfile(**row) for row in json.loads(path.read_text())["stages"]]


def load_profile_meta(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())["meta"]) if path.exists() else {}


class ExecutorActuator:
    """Cores of a running application, as one-core executors on a coarse-grained master."""

    def __init__(self, sc: Any) -> None:
        self.sc = sc
        self.resizable = not sc.master.startswith("local")
        # Releasing an executor mid-job is only safe when its shuffle files outlive it.
        self.releases = (
            self.resizable
            and sc.getConf().get("spark.shuffle.service.enabled", "false").lower() == "true"
        )
        self.cores_per_executor = max(1, int(sc.getConf().get("spark.executor.cores", "1")))
        self.target = 0
        self._released: set[str] = set()  # asked to go; REST lists them until they have

    def held_cores(self) -> int:
        """Cores the application holds now (``local[*]``: its fixed parallelism)."""
        if not self.resizable:
            return int(self.sc.defaultParallelism)
        return len(self.executors()) * self.cores_per_executor

    def wait_for(self, cores: int, timeout_s: float = 60.0) -> int:
        """Wait (bounded) until the executors asked for have registered; returns cores held."""
        end = time.monotonic() + timeout_s
        while self.resizable and self.held_cores() < cores and time.monotonic() < end:
            time.sleep(0.5)
        return self.held_cores()

    def executors(self) -> list[dict[str, Any]]:
        """Live executors, less those already released (REST shows them for a while)."""
        return [
            e
            for e in _rest(self.sc, "executors")
            if e["id"] != "driver" and e["isActive"] and e["id"] not in self._released
        ]

    def set_cores(self, cores: int) -> None:
        """Ask for ``cores``; surplus executors are released as soon as they are idle (each
        call retries, so a shrink lands at the first gap between tasks, and no running task is
        thrown away). Without an external shuffle service (``releases`` false) surplus
        executors are kept: a released one would take its shuffle output with it, and Spark
        would rerun the stage that wrote it, costing more than the cores saved."""
        n = math.ceil(cores / self.cores_per_executor)
        if not self.resizable:
            return
        jvm, jsc = self.sc._jvm, self.sc._jsc.sc()
        empty = getattr(jvm.scala.collection.immutable, "Map$").__getattr__("MODULE$").empty()
        # Every call, not only on change: another actuator (or a kill) may have moved the
        # application's target since; the request is idempotent and cheap.
        jsc.requestTotalExecutors(n, 0, empty)
        self.target = n
        if not self.releases:
            return
        alive = self.executors()
        extra = len(alive) - n
        if extra > 0:  # idle ones first, newest first
            order = sorted(alive, key=lambda e: (e["activeTasks"] > 0, -int(e["id"])))
            ids = [e["id"] for e in order[:extra] if e["activeTasks"] == 0]
            if ids:
                self._released.update(ids)
                seq = jvm.scala.jdk.javaapi.CollectionConverters.asScala(
                    jvm.java.util.ArrayList(ids)
                ).toSeq()
                jsc.killExecutors(seq)
                # killExecutors also lowers the app's executor target by len(ids): put it back
                # to n, or a later loss would leave the job with nothing to run on.
                jsc.requestTotalExecutors(n, 0, empty)


class DeadlineController:
    """dynaSpark's loop around Spark work: ``with DeadlineController(...) as ctl: work()``."""

    def __init__(
        self,
        sc: Any,
        profile: Sequence[StageProfile],
        deadline_s: float,
        max_cores: int,
        period_s: float = 1.0,
        log: Any = print,
        offsets: Sequence[int] | None = None,
    ) -> None:
        self.sc, self.profile = sc, list(profile)
        if offsets is not None and len(offsets) != len(self.profile):
            raise ValueError(f"{len(offsets)} stage offsets for {len(self.profile)} stages")
        self.offsets = None if offsets is None else list(offsets)
        self.deadline_s, self.max_cores, self.period_s = deadline_s, max_cores, period_s
        self.log = log
        self.actuator = ExecutorActuator(sc)
        self.timeline: list[dict[str, Any]] = []
        self.stage_plans: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.verdict = assess_spark_deadline(self.profile, deadline_s, max_cores)

    def __enter__(self) -> DeadlineController:
        if not self.verdict.feasible:
            raise SparkDeadlineInfeasible(self.verdict)
        self.log(f"[slaflow] spark deadline: {self.verdict.message}")
        if self.actuator.resizable and not self.actuator.releases:
            self.log(
                "[slaflow] spark deadline: executors can be added but not released "
                "mid-job: spark.shuffle.service.enabled is not true, and a released "
                "executor's shuffle output would be lost (its stage reruns). Enable the "
                "workers' external shuffle service and set spark.shuffle.service.enabled "
                "in the Spark connection's extras to let the controller shrink"
            )
        self.first_stage_id = last_stage_id(self.sc) + 1
        self.t0 = time.monotonic()
        first = plan_stage(self.profile, 0, 0.0, self.deadline_s, self.max_cores)
        self.actuator.set_cores(first.cores)
        self._thread = threading.Thread(
            target=self._loop, name="slaflow-spark-deadline", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.elapsed_s = time.monotonic() - self.t0
        now = round(self.elapsed_s, 2)
        if not self.timeline or self.timeline[-1]["t"] < now:  # close the last interval
            last = (
                self.timeline[-1]
                if self.timeline
                else {"cores": self.actuator.target, "held": self.max_cores}
            )
            self.timeline.append(
                {
                    "t": now,
                    "stage": None,
                    "done": None,
                    "cores": last["cores"],
                    "held": last["held"],
                }
            )

    def _loop(self) -> None:
        tracker = self.sc.statusTracker()
        seen: dict[int, int] = {}  # stage id -> profile index
        ctl: StageController | None = None
        current, stage_t0 = -1, 0.0
        while not self._stop.wait(self.period_s):
            now = time.monotonic() - self.t0
            try:
                active = sorted(tracker.getActiveStageIds())
                alive = self.actuator.held_cores()
            except Exception as exc:
                if self.sc._jsc is None or self._stop.is_set():  # the context is stopping
                    return
                self.log(f"[slaflow] spark deadline: monitor skipped a tick ({exc})")
                continue
            if not active:
                self.timeline.append(
                    {
                        "t": round(now, 2),
                        "stage": None,
                        "done": None,
                        "cores": self.actuator.target,
                        "held": alive,
                    }
                )
                continue
            sid = active[0]
            if sid not in seen:
                seen[sid] = self._profile_index(sid, len(seen))
            if sid != current:
                idx = seen[sid]
                plan = plan_stage(self.profile, idx, now, self.deadline_s, self.max_cores)
                stage = self.profile[idx]
                ctl = StageController(
                    plan.cores,
                    max(plan.deadline_s, self.period_s),
                    max(1, min(self.max_cores, stage.tasks)),
                )
                current, stage_t0 = sid, now
                self.stage_plans.append(
                    {
                        "stage_id": sid,
                        "profile_index": idx,
                        "start_s": round(now, 2),
                        "deadline_s": round(plan.deadline_s, 2),
                        "cores": plan.cores,
                    }
                )
                self.log(
                    f"[slaflow] spark stage {sid} (profile #{idx}) starts at {now:.1f}s: "
                    f"{plan.deadline_s:.1f}s, {plan.cores} cores"
                )
            info = tracker.getStageInfo(sid)
            done = (info.numCompletedTasks / info.numTasks) if info and info.numTasks else 0.0
            assert ctl is not None
            cores = ctl.update(now - stage_t0, done, self.period_s)
            n = max(1, min(self.max_cores, math.ceil(cores - 1e-9)))
            self.actuator.set_cores(n)
            self.timeline.append(
                {
                    "t": round(now, 2),
                    "stage": sid,
                    "done": round(done, 3),
                    "cores": n,
                    "held": alive,
                }
            )

    def _profile_index(self, stage_id: int, seen: int) -> int:
        """The profiled stage a running one stands for: by offset when known, else by order."""
        if self.offsets is None:
            return min(seen, len(self.profile) - 1)
        offset = stage_id - self.first_stage_id
        before = [i for i, o in enumerate(self.offsets) if o <= offset]
        return before[-1] if before else 0

    def core_seconds(self) -> float:
        """Cores held x seconds, from the timeline (what a cluster would bill)."""
        total, prev_t = 0.0, 0.0
        for row in self.timeline:
            total += (row["t"] - prev_t) * row["held"]
            prev_t = row["t"]
        return total


def run_with_deadline(
    spark: Any,
    work: Callable[[], T],
    *,
    deadline_s: float,
    max_cores: int,
    profile_path: Path,
    on_infeasible: str = "fail",
    period_s: float = 1.0,
    log: Callable[[str], Any] = print,
) -> tuple[T, dict[str, Any]]:
    """Run ``work()`` (Spark actions on ``spark``) so that it ends by ``deadline_s``.

    Without a stored profile this run *is* the profiling run: all ``max_cores``, stages read
    back from Spark's REST API and saved to ``profile_path`` for the next run. With one, the
    deadline is checked first (``SparkDeadlineInfeasible`` before any stage runs, unless
    ``on_infeasible`` is ``best_effort``: then all the cores, no control) and the work runs
    under ``DeadlineController``. Returns the work's result and a report for the task log.
    """
    sc = spark.sparkContext
    actuator = ExecutorActuator(sc)
    profile = load_profile(profile_path)
    report: dict[str, Any] = {
        "deadline_s": deadline_s,
        "max_cores": max_cores,
        "master": sc.master,
        "resizable": actuator.resizable,
        "profile": str(profile_path),
    }
    if profile:
        controller = DeadlineController(
            sc,
            profile,
            deadline_s,
            max_cores,
            period_s=period_s,
            log=log,
            offsets=load_profile_meta(profile_path).get("offsets"),
        )
        report["feasibility"] = controller.verdict.to_dict()
        if controller.verdict.feasible:
            with controller:
                result = work()
            report.update(
                mode="controlled",
                elapsed_s=round(controller.elapsed_s, 3),
                core_seconds=round(controller.core_seconds(), 2),
                stage_plans=controller.stage_plans,
                timeline=controller.timeline[-200:],
            )
            report["met"] = controller.elapsed_s <= deadline_s
            return result, report
        if on_infeasible != "best_effort":
            raise SparkDeadlineInfeasible(controller.verdict)
        log(
            f"[slaflow] spark deadline: {controller.verdict.message}; on_infeasible is "
            f"best_effort, so running on all {max_cores} cores without control"
        )
        report["mode"] = "best_effort"
    else:
        log(
            f"[slaflow] spark deadline: no profile of this job at {profile_path} yet; this run "
            f"profiles it on {max_cores} cores and the next runs are controlled"
        )
        report["mode"] = "profiling"
    actuator.set_cores(max_cores)
    actuator.wait_for(max_cores)
    first = last_stage_id(sc) + 1
    started = time.monotonic()
    result = work()
    elapsed = time.monotonic() - started
    if report["mode"] == "profiling":
        stages = completed_stages(sc, first - 1)
        held = actuator.held_cores()
        save_profile(
            profile_path,
            profile_from_stages(stages, held),
            {
                "cores": held,
                "seconds": round(elapsed, 3),
                "master": sc.master,
                "offsets": stage_offsets(stages, first),
            },
        )
        report["profiled_stages"] = len(stages)
    report.update(
        elapsed_s=round(elapsed, 3),
        met=elapsed <= deadline_s,
        core_seconds=round(elapsed * actuator.held_cores(), 2),
    )
    return result, report


def controlled_conf(master: str, max_cores: int) -> dict[str, str]:
    """Spark conf of a job under the deadline controller: one-core executors, so the
    controller can move the cores one at a time (a ``local`` master has fixed cores: nothing
    to set)."""
    if master.startswith("local"):
        return {}
    return {
        "spark.executor.cores": "1",
        "spark.dynamicAllocation.enabled": "false",
        "spark.cores.max": str(max_cores),
    }


def contract_profile_path(job: str, contract: Any, master: str) -> Path:
    """``stored_profile_path`` of ``job`` for a run contract's data, split and master."""
    return stored_profile_path(
        job,
        data_source=contract.data_source,
        label_column=contract.label_column,
        validation_fraction=contract.validation_fraction,
        test_fraction=contract.test_fraction,
        seed=contract.seed,
        master=master,
    )


def stored_profile_path(
    job: str,
    *,
    data_source: str,
    label_column: str,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    master: str,
) -> Path:
    """Where the stored profile of ``job`` on this data, split and master lives (a changed
    data file is profiled again)."""
    import hashlib
    import os

    from slaflow.settings import home

    stamp: list[Any] = []
    local = data_source[len("file://") :] if data_source.startswith("file://") else data_source
    if "://" not in local and os.path.exists(local):
        st = os.stat(local)
        stamp = [st.st_size, st.st_mtime_ns]
    blob = json.dumps(
        [data_source, stamp, label_column, validation_fraction, test_fraction, seed, master]
    )
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return home() / "spark_profiles" / f"{job}-{digest}.json"
