"""Spark applications under deadlines on a simulated cluster, driven by the dynaSpark policy.

    python benchmarks/spark_sim.py [--seeds 3] [--out FILE]

The *same* code as the Spark controller (``policies.plan_stage``, ``StageController``,
``arbitrate``) on a modelled standalone cluster of ``nodes x cores`` cores. Applications arrive
over time (Poisson), each a chain of 3-6 stages with a profile (records, nominal records/s per
core, tasks); the true rate of each stage is off the profile by up to +-25%. A deadline is
``slack x`` the application's profiled time on 8 cores, counted from its arrival. Every second
each running stage asks for cores, the arbiter splits the cluster, and the stages progress at
their true rate on whole cores.

Policies:
- ``slaflow_proportional`` / ``slaflow_edf``: admission by ``assess_spark_deadline`` (an app
  that cannot make its deadline even alone on the cluster is refused at once and costs
  nothing), per-stage plan at stage start, PI loop every second, the named arbiter;
- ``static_deadline``: the fixed cores that meet the deadline from the profile (the whole
  application's work over ``alpha x deadline``), held from start to end, proportional sharing
  when the cluster is full (the "static allocation that meets the same deadline");
- ``static_max``: every stage on as many cores as it has tasks (Spark's default greed),
  proportional sharing.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import (  # noqa: E402
    SPARK_ALPHA,  # noqa: E402
    StageController,
    StageProfile,
    arbitrate,
    assess_spark_deadline,
    plan_stage,
)

POLICIES = ("slaflow_proportional", "slaflow_edf", "static_deadline", "static_max")


@dataclass
class App:
    aid: int
    arrival: float
    deadline: float  # relative to arrival
    stages: list[StageProfile]
    speed: list[float]  # true rate / profiled rate, per stage
    stage: int = 0
    done: float = 0.0  # fraction of the current stage
    stage_start: float = 0.0
    ctl: StageController | None = None
    fixed: float = 0.0
    finish: float | None = None
    refused: bool = False
    core_s: float = 0.0
    history: list[float] = field(default_factory=list)


def make_apps(n: int, rate: float, seed: int, slack: tuple[float, float]) -> list[App]:
    rng = random.Random(seed)
    t, apps = 0.0, []
    for aid in range(n):
        t += rng.expovariate(rate)
        stages = [
            StageProfile(
                f"s{i}",
                rng.randint(20_000, 400_000),
                rng.uniform(500.0, 3000.0),
                tasks=rng.choice([8, 16, 32, 64]),
                overhead_s=rng.uniform(0.5, 2.0),
            )
            for i in range(rng.randint(3, 6))
        ]
        on8 = sum(s.seconds(8) for s in stages)
        apps.append(
            App(
                aid, t, rng.uniform(*slack) * on8, stages, [rng.uniform(0.75, 1.25) for _ in stages]
            )
        )
    return apps


def simulate(policy: str, apps: list[App], cores: int, dt: float = 1.0) -> dict[str, float]:
    now, pending, running = 0.0, sorted(apps, key=lambda a: a.arrival), []
    refused = 0
    while pending or running:
        while pending and pending[0].arrival <= now:
            app = pending.pop(0)
            if policy.startswith("slaflow"):
                verdict = assess_spark_deadline(app.stages, app.deadline, cores)
                if not verdict.feasible:
                    app.refused, refused = True, refused + 1
                    continue
            if policy == "static_deadline":
                work = sum(s.core_seconds for s in app.stages)
                over = sum(s.overhead_s for s in app.stages)
                app.fixed = min(
                    cores, math.ceil(work / max(SPARK_ALPHA * app.deadline - over, 1e-9))
                )
            app.stage_start = now
            running.append(app)
        demands: dict[str, float] = {}
        deadlines: dict[str, float] = {}
        for app in running:
            s = app.stages[app.stage]
            if policy.startswith("slaflow"):
                if app.ctl is None:
                    plan = plan_stage(app.stages, app.stage, now - app.arrival, app.deadline, cores)
                    app.ctl = StageController(
                        plan.cores, max(plan.deadline_s, dt), min(cores, s.tasks)
                    )
                want = float(math.ceil(app.ctl.cores - 1e-9))
            elif policy == "static_deadline":
                want = float(app.fixed)
            else:
                want = float(s.tasks)
            demands[str(app.aid)] = min(want, float(s.tasks))
            deadlines[str(app.aid)] = app.arrival + app.deadline
        arb = "edf" if policy == "slaflow_edf" else "proportional"
        grant = arbitrate(demands, deadlines, float(cores), arb)
        for app in list(running):
            s = app.stages[app.stage]
            # Whole cores, as executors are: floor of the share, at least one while running.
            n = max(1, math.floor(grant[str(app.aid)] + 1e-9)) if grant[str(app.aid)] > 0 else 0
            app.core_s += n * dt
            elapsed = now + dt - app.stage_start
            if n and elapsed > s.overhead_s:
                run = min(dt, elapsed - s.overhead_s)
                app.done += run * n * s.nominal_rate * app.speed[app.stage] / max(s.records, 1)
            if app.ctl is not None:
                app.ctl.update(elapsed, app.done, dt)
            if app.done >= 1.0:
                app.stage, app.done, app.stage_start, app.ctl = app.stage + 1, 0.0, now + dt, None
                if app.stage == len(app.stages):
                    app.finish = now + dt
                    running.remove(app)
        now += dt
    ran = [a for a in apps if not a.refused]
    met = [a for a in ran if a.finish is not None and a.finish - a.arrival <= a.deadline]
    ratio = [(a.finish - a.arrival) / a.deadline for a in ran if a.finish is not None]
    return {
        "deadlines_met_frac": round(len(met) / len(apps), 4),
        "met_of_admitted": round(len(met) / max(len(ran), 1), 4),
        "refused": refused,
        "core_seconds": round(sum(a.core_s for a in apps), 1),
        "median_finish_over_deadline": round(statistics.median(ratio), 4) if ratio else None,
    }


SCENARIOS = [  # nodes x cores per node, arrivals per second, deadline slack range
    {"nodes": 8, "cores_per_node": 8, "rate": 0.05, "slack": (1.0, 3.0)},
    {"nodes": 8, "cores_per_node": 8, "rate": 0.08, "slack": (1.0, 3.0)},
    {"nodes": 32, "cores_per_node": 16, "rate": 0.5, "slack": (1.0, 3.0)},
]


def run_scenarios(seeds: int, n_apps: int) -> list[dict[str, object]]:
    out = []
    for sc in SCENARIOS:
        cores = sc["nodes"] * sc["cores_per_node"]
        per_policy: dict[str, list[dict[str, float]]] = {pol: [] for pol in POLICIES}
        for seed in range(seeds):
            for pol in POLICIES:
                apps = make_apps(n_apps, sc["rate"], seed, sc["slack"])
                per_policy[pol].append(simulate(pol, apps, cores))
        row = {
            "nodes": sc["nodes"],
            "cores_per_node": sc["cores_per_node"],
            "arrival_rate": sc["rate"],
            "apps": n_apps,
            "slack": list(sc["slack"]),
            "policies": {
                pol: {
                    k: round(statistics.mean(r[k] for r in rs), 4)
                    for k in ("deadlines_met_frac", "met_of_admitted", "refused", "core_seconds")
                }
                for pol, rs in per_policy.items()
            },
        }
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--apps", type=int, default=200)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    out = run_scenarios(args.seeds, args.apps)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"simulated": out, "seeds": args.seeds}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
