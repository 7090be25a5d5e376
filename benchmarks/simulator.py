"""Cluster-scale simulator: the *same* policy code as the training job, on a modelled cluster.

Jobs arrive over time (Poisson) on a cluster of ``nodes x cores_per_node`` cores; one worker
takes one core. Each job's true progress follows Amdahl's law (seconds per epoch for n
workers) calibrated from real runs on this machine (``--calibration``), a fixed (re)start cost,
and a power-law learning curve that reaches the job's target after ``epochs_to_target``
epochs. A job's deadline counts from its arrival, so queueing eats into it.

Policies compared (all stop a job at its deadline, as the training job does):
- ``slaflow``: feasibility admission (``policies.assess_feasibility``: a job that cannot meet
  its deadline even alone on the cluster is rejected at once and costs nothing, and a queued
  job is turned away when its deadline can no longer be met); earliest deadline first, each
  job started with the fewest workers that meet its deadline; then ``policies.after_epoch``
  (PI deadline controller + accuracy policy) after every epoch, shrinking jobs that are ahead
  and growing jobs that fall behind; the EDF arbiter hands free cores to the jobs that ask for
  them; every resize pays the restart cost.
- ``static_max``: every job gang-starts with its ``max_workers`` when that many cores are free
  (FIFO), and keeps them.
- ``static_fair``: a job starts with an equal share of the cluster (cores / jobs present,
  capped by ``max_workers``) and keeps it.
- ``edf_no_resize``: earliest deadline first; a job starts with the fewest workers that meet
  its deadline (from its calibration), and keeps them.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import (  # noqa: E402
    DEADLINE_ALPHA,  # noqa: E402
    Action,
    ControllerState,
    EpochEstimate,
    EpochRecord,
    ThroughputModel,
    Verdict,
    after_epoch,
    assess_feasibility,
    fewest_workers,
    starting_workers,
)

POLICIES = ("slaflow", "static_max", "static_fair", "edf_no_resize")


@dataclass
class Job:
    jid: int
    arrival: float
    deadline: float  # absolute
    epochs_to_target: int
    true: ThroughputModel
    calib: ThroughputModel
    max_workers: int
    prior_epochs: int
    # dynamic
    workers: int = 0
    started: float | None = None
    busy_until: float = 0.0  # restart / startup in progress until then
    epoch_progress: float = 0.0
    records: list[EpochRecord] = field(default_factory=list)
    state: ControllerState = field(default_factory=ControllerState)
    first_of_segment: bool = True
    want: int = 0
    done: bool = False
    met: bool = False
    rejected: bool = False
    finish: float | None = None
    core_seconds: float = 0.0
    epoch_started: float = 0.0

    def accuracy(self, epoch: int) -> float:
        b = math.log(10) / math.log(max(self.epochs_to_target, 2))
        return 1 - 0.5 * epoch**-b  # 0.95 at epochs_to_target


def make_jobs(
    n_jobs: int, arrival_rate: float, base: ThroughputModel, seed: int, max_workers: int
) -> list[Job]:
    rng = random.Random(seed)
    t = 0.0
    jobs = []
    for i in range(n_jobs):
        t += rng.expovariate(arrival_rate)
        scale = rng.uniform(2.0, 12.0)  # data size relative to the calibrated job
        serial = rng.uniform(0.02, 0.15)
        t1 = base.epoch_seconds(1) * scale
        table = {n: t1 * (serial + (1 - serial) / n) for n in range(1, max_workers + 1)}
        true = ThroughputModel("cpu", table, base.startup_s * rng.uniform(0.8, 1.5))
        noise = rng.uniform(0.9, 1.1)
        calib = ThroughputModel("cpu", {1: table[1] * noise, 4: table[4] * noise}, true.startup_s)
        epochs = rng.randint(8, 40)
        ref = true.startup_s + epochs * table[4]  # time on 4 workers
        deadline = t + rng.uniform(0.8, 3.0) * ref
        prior = max(1, round(epochs * rng.uniform(0.85, 1.15)))  # history's estimate
        jobs.append(Job(i, t, deadline, epochs, true, calib, max_workers, prior))
    return jobs


def simulate(policy: str, jobs: list[Job], cores: int, dt: float = 1.0) -> dict[str, float]:
    free = cores
    pending: list[Job] = []
    running: list[Job] = []
    arrivals = sorted(jobs, key=lambda j: j.arrival)
    ai = 0
    now = 0.0
    horizon = max(j.deadline for j in jobs) + 1.0
    while now <= horizon and (ai < len(arrivals) or pending or running):
        while ai < len(arrivals) and arrivals[ai].arrival <= now:
            job = arrivals[ai]
            ai += 1
            if policy == "slaflow":
                f = assess_feasibility(
                    deadline_s=job.deadline - job.arrival,
                    elapsed_s=0.0,
                    max_workers=job.max_workers,
                    capacity={"cpu": cores},
                    models=[job.calib],
                    # The estimate is uncertain: admission turns a job away only when even
                    # 80% of its planned epochs cannot fit (the real plan task's "at risk").
                    estimate=EpochEstimate(
                        job.prior_epochs, max(1, int(0.8 * job.prior_epochs)), True, "sim"
                    ),
                )
                if f.verdict is Verdict.INFEASIBLE:
                    job.rejected = job.done = True
                    continue
            pending.append(job)
        # Stop jobs whose deadline passed (the deadline guard truncates them).
        for job in list(running):
            if now >= job.deadline:
                _finish(job, now, met=False)
                free += job.workers
                running.remove(job)
        for job in list(pending):
            if now >= job.deadline:
                job.done = True
                pending.remove(job)
        free = _admit(policy, pending, running, free, cores, now)
        if policy == "slaflow":
            free = _grow(running, free, now)
        # Advance time.
        for job in running:
            job.core_seconds += job.workers * dt
            if now < job.busy_until:
                continue
            job.epoch_progress += dt / job.true.epoch_seconds(job.workers)
        now += dt
        for job in list(running):
            # Progress carries over between ticks, so epochs keep their true length.
            while job in running and job.epoch_progress >= 1.0 and now >= job.busy_until:
                job.epoch_progress -= 1.0
                free = _epoch_end(policy, job, now, running, free)
    for job in running:
        _finish(job, now, met=False)
    decided = [j for j in jobs]
    met = sum(1 for j in decided if j.met)
    return {
        "deadlines_met": met,
        "deadlines_met_frac": round(met / len(jobs), 4),
        "core_seconds": round(sum(j.core_seconds for j in jobs), 1),
        "rejected": sum(1 for j in jobs if j.rejected),
    }


def _finish(job: Job, now: float, met: bool) -> None:
    job.done, job.met, job.finish = True, met, now


def _start(job: Job, n: int, now: float) -> None:
    job.workers, job.started = n, now
    job.busy_until = now + job.true.startup_s
    job.first_of_segment = True


def _admit(
    policy: str, pending: list[Job], running: list[Job], free: int, cores: int, now: float
) -> int:
    if policy == "static_max":
        while pending and free >= pending[0].max_workers:
            job = pending.pop(0)
            _start(job, job.max_workers, now)
            running.append(job)
            free -= job.workers
        return free
    if policy == "static_fair":
        while pending and free >= 1:
            share = max(1, cores // (len(running) + len(pending)))
            job = pending.pop(0)
            _start(job, min(job.max_workers, share, free), now)
            running.append(job)
            free -= job.workers
        return free
    # slaflow and edf_no_resize: earliest deadline first, fewest workers that meet it.
    pending.sort(key=lambda j: j.deadline)
    for job in list(pending):
        if free < 1:
            break
        budget = DEADLINE_ALPHA * (job.deadline - now)
        n = (starting_workers if policy == "slaflow" else fewest_workers)(
            job.calib, job.prior_epochs, budget, job.max_workers
        )
        if n is None:
            if policy == "slaflow":
                # Feasibility re-checked at start: a job that can no longer make its deadline
                # is turned away instead of burning cores.
                pending.remove(job)
                job.rejected = job.done = True
                continue
            n = job.max_workers
        if n > free:
            continue  # waits for its size (a later, smaller job may fit meanwhile)
        pending.remove(job)
        _start(job, n, now)
        running.append(job)
        free -= job.workers
    return free


def _grow(running: list[Job], free: int, now: float) -> int:
    """EDF arbiter: jobs whose controller asked for more workers get free cores first."""
    for job in sorted(running, key=lambda j: j.deadline):
        if free < 1:
            break
        if job.want > job.workers and now >= job.busy_until:
            extra = min(job.want - job.workers, free)
            job.workers += extra
            free -= extra
            job.busy_until = now + job.true.startup_s  # restart with the new size
            job.first_of_segment = True
            job.want = 0
    return free


def _epoch_end(policy: str, job: Job, now: float, running: list[Job], free: int) -> int:
    epoch = len(job.records) + 1
    duration = job.true.epoch_seconds(job.workers)
    job.records.append(
        EpochRecord(epoch, job.workers, duration, job.accuracy(epoch), job.first_of_segment)
    )
    job.first_of_segment = False
    if policy != "slaflow":
        if epoch >= job.epochs_to_target:
            _finish(job, now, met=now <= job.deadline)
            running.remove(job)
            return free + job.workers
        return free
    plan = after_epoch(
        now_s=now - job.arrival,
        deadline_s=job.deadline - job.arrival,
        records=job.records,
        max_epochs=200,
        stop_accuracy=0.95 - 1e-9,
        workers=job.workers,
        max_workers=min(job.max_workers, job.workers + free),
        model=job.calib,
        state=job.state,
        prior_epochs=job.prior_epochs,
    )
    job.state = plan.state
    if plan.action is Action.STOP:
        _finish(job, now, met=job.records[-1].val_accuracy >= 0.95 - 1e-9 and now <= job.deadline)
        running.remove(job)
        return free + job.workers
    if plan.action is Action.RESIZE:
        job.epoch_progress = 0.0  # a restart resumes from the epoch's checkpoint
        if plan.workers < job.workers:
            free += job.workers - plan.workers
            job.workers = plan.workers
            job.busy_until = now + job.true.startup_s
            job.first_of_segment = True
        else:
            job.want = plan.workers  # granted by the arbiter from free cores
    return free


def run(
    nodes: int,
    cores_per_node: int,
    n_jobs: int,
    arrival_rate: float,
    seed: int,
    base: ThroughputModel,
    max_workers: int,
) -> dict[str, object]:
    out: dict[str, object] = {
        "jobs": n_jobs,
        "nodes": nodes,
        "cores": nodes * cores_per_node,
        "arrival_rate_per_s": arrival_rate,
        "seed": seed,
    }
    for policy in POLICIES:
        jobs = make_jobs(n_jobs, arrival_rate, base, seed, max_workers)
        out[policy] = simulate(policy, jobs, nodes * cores_per_node)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=40)
    p.add_argument("--cores-per-node", type=int, default=8)
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--arrival-rate", type=float, default=0.05, help="jobs per second")
    p.add_argument("--max-workers", type=int, default=16)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="JSON with epoch_s by workers and startup_s from a real calibration",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.calibration and args.calibration.exists():
        raw = json.loads(args.calibration.read_text())
        base = ThroughputModel(
            "cpu",
            {int(k): float(v) for k, v in raw["epoch_s"].items()},
            float(raw["startup_s"]),
            source=str(args.calibration),
        )
    else:
        base = ThroughputModel("cpu", {1: 2.0, 2: 1.2}, 12.0, source="default")
    results = [
        run(
            args.nodes, args.cores_per_node, args.jobs, args.arrival_rate, s, base, args.max_workers
        )
        for s in range(args.seeds)
    ]
    summary: dict[str, object] = {
        "jobs": args.jobs,
        "nodes": args.nodes,
        "cores": args.nodes * args.cores_per_node,
        "seeds": args.seeds,
        "calibration": base.source,
        "per_seed": results,
    }
    for policy in POLICIES:
        summary[policy] = {
            "deadlines_met_frac": round(
                sum(
                    r[policy]["deadlines_met_frac"]  # type: ignore[index]
                    for r in results
                )
                / len(results),
                4,
            ),
            "core_seconds": round(
                sum(
                    r[policy]["core_seconds"]  # type: ignore[index]
                    for r in results
                )
                / len(results),
                1,
            ),
        }
    print(json.dumps({k: v for k, v in summary.items() if k != "per_seed"}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
