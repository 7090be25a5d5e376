"""The serving profile as a model: Serve-path overhead plus in-process compute, and when a
stored profile is reused."""

from __future__ import annotations

import pytest

from policies import (
    ComputeSample,
    ServeOverhead,
    build_profile,
    node_key,
    profile_key,
    profile_points,
    replica_capacity_rps,
)

pytestmark = pytest.mark.unit

OVERHEAD = ServeOverhead(p50_ms=8.0, p99_ms=20.0, capacity_rps=150.0, cold_start_s=2.0)


def _sample(
    variant: str = "full", cpus: float = 0.5, batch: int = 1, **over: float
) -> ComputeSample:
    base = dict(p50_ms=0.4, p99_ms=1.2, batch_ms=0.4, row_ms=0.01, load_s=7.0)
    base.update(over)
    return ComputeSample(variant=variant, num_cpus=cpus, max_batch_size=batch, **base)


def test_points_add_the_model_compute_to_the_serve_path() -> None:
    (point,) = profile_points(OVERHEAD, [_sample()])
    assert point.p50_ms == pytest.approx(8.4) and point.p99_ms == pytest.approx(21.2)
    assert point.row_ms == pytest.approx(0.01) and point.num_cpus == 0.5


def test_capacity_is_the_slower_of_path_and_compute_on_shared_cores() -> None:
    # compute alone: 1 row per 0.4 ms = 2500/s; path alone 150/s; together just under 150
    cap = replica_capacity_rps(OVERHEAD, _sample())
    assert 140 < cap < 150
    # a heavy model is limited by its own compute, and batching raises that limit
    heavy = replica_capacity_rps(OVERHEAD, _sample(batch_ms=20.0))
    batched = replica_capacity_rps(OVERHEAD, _sample(batch=16, batch_ms=40.0))
    assert heavy < 50 and batched > 2 * heavy


def test_profile_has_each_variant_with_its_own_accuracy_and_cold_start() -> None:
    samples = [
        _sample("full", load_s=7.0),
        _sample("int8", load_s=1.5),
        _sample("int8", cpus=1.0, load_s=1.0),
    ]
    profile = build_profile(
        OVERHEAD,
        samples,
        accuracy={"full": 0.95, "int8": 0.94},
        size_bytes={"full": 400, "int8": 100},
    )
    variants = {v.name: v for v in profile.variants}
    assert variants["full"].cold_start_s == pytest.approx(9.0)
    assert variants["int8"].cold_start_s == pytest.approx(3.5)  # the slowest load counts
    assert variants["int8"].accuracy == 0.94 and variants["int8"].size_bytes == 100
    assert len(profile.points) == 3 and profile.overhead_p50_ms == 8.0


def test_a_variant_without_an_accuracy_is_left_out() -> None:
    profile = build_profile(
        OVERHEAD, [_sample("full"), _sample("int8")], accuracy={"full": 0.9}, size_bytes={}
    )
    assert [v.name for v in profile.variants] == ["full"]
    assert {p.variant for p in profile.points} == {"full"}


def test_profile_key_changes_with_what_latency_depends_on_and_nothing_else() -> None:
    base = dict(
        model_signature="dense=64x32|dense_1=32x10",
        variants=["full", "int8"],
        cpus=[0.5, 1.0],
        batches=[1, 16],
        node="n1",
    )
    key = profile_key(**base)  # type: ignore[arg-type]
    assert (
        profile_key(
            **{
                **base,
                "variants": ["int8", "full"],  # type: ignore[arg-type]
                "cpus": [1, 0.5],
            }
        )
        == key
    )
    for change in (
        {"model_signature": "dense=64x64|dense_1=64x10"},
        {"cpus": [0.5]},
        {"batches": [1]},
        {"node": "n2"},
        {"variants": ["full"]},
    ):
        assert profile_key(**{**base, **change}) != key  # type: ignore[arg-type]


def test_node_key_is_the_set_of_shapes_replicas_can_land_on() -> None:
    a = {"CPU": 4.0, "memory": 8e9, "node:10.0.0.1": 1.0, "object_store_memory": 1e9}
    b = {"CPU": 4.0, "memory": 9e9, "node:10.0.0.2": 1.0, "object_store_memory": 2e9}
    large = {"CPU": 8.0, "large": 1.0, "node:10.0.0.3": 1.0}
    head = {"CPU": 0.0, "node:10.0.0.9": 1.0}
    assert node_key([a, head]) == node_key([b])  # addresses and memory do not matter
    assert node_key([a, large]) != node_key([a])
    assert node_key([a, large], resource="large") == node_key([large])
