"""The cluster simulator drives the real policy code; small runs take a second."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from policies import ThroughputModel  # noqa: E402

pytestmark = pytest.mark.unit

BASE = ThroughputModel("cpu", {1: 2.0, 2: 1.2}, 12.0)


def test_uncontended_cluster_slaflow_meets_deadlines_with_fewer_cores() -> None:
    import simulator

    out = simulator.run(
        nodes=20, cores_per_node=8, n_jobs=40, arrival_rate=0.02, seed=1, base=BASE, max_workers=16
    )
    sla, static = out["slaflow"], out["static_max"]
    assert sla["deadlines_met_frac"] >= 0.9  # type: ignore[index]
    assert sla["core_seconds"] < 0.75 * static["core_seconds"]  # type: ignore[index]


def test_contended_cluster_slaflow_beats_static_policies() -> None:
    import simulator

    out = simulator.run(
        nodes=5, cores_per_node=8, n_jobs=80, arrival_rate=0.1, seed=2, base=BASE, max_workers=16
    )
    best_static = max(
        out[p]["deadlines_met_frac"]  # type: ignore[index]
        for p in ("static_max", "static_fair")
    )
    assert out["slaflow"]["deadlines_met_frac"] > best_static  # type: ignore[index]
