"""The serving profile as a model: what a replica adds to the Serve path, from two cheap
measurements instead of one Serve deployment per point.

- ``ServeOverhead``: the Serve path itself (HTTP proxy -> router -> a replica that does no
  work), measured once per node type and reused by every model: latency, saturated
  throughput and the cold start of a replica.
- ``ComputeSample``: the model's own compute per variant, replica shape and batch size,
  measured in-process with the replica's thread count, plus its load time.

``profile_points`` adds them up into the ``ProfilePoint``s the placement planner reads, and
``profile_key`` says when a stored profile can be reused (nothing it depends on changed).
How far these predictions were from latencies measured under load: docs/serving.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from policies._placement import ProfilePoint, ServingProfile, VariantInfo


@dataclass(frozen=True)
class ServeOverhead:
    """The Serve path with a no-op model, one replica: one-row latency, saturated req/s,
    and seconds from deploy to the first answer (a replica's cold start without a model)."""

    p50_ms: float
    p99_ms: float
    capacity_rps: float
    cold_start_s: float
    node_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServeOverhead:
        return cls(
            **{k: d[k] for k in ("p50_ms", "p99_ms", "capacity_rps", "cold_start_s")},
            node_key=str(d.get("node_key", "")),
        )


@dataclass(frozen=True)
class ComputeSample:
    """One variant's compute on one replica shape at one batch size, in-process.

    ``p50_ms``/``p99_ms``: a one-row call; ``batch_ms``: a full ``max_batch_size`` batch;
    ``row_ms``: each extra row of a large request; ``load_s``: import and model load in a
    fresh process (what a replica pays before its first answer)."""

    variant: str
    num_cpus: float
    max_batch_size: int
    p50_ms: float
    p99_ms: float
    batch_ms: float
    row_ms: float
    load_s: float
    num_gpus: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ComputeSample:
        return cls(**dict(d))


def replica_capacity_rps(overhead: ServeOverhead, sample: ComputeSample) -> float:
    """Saturated one-row requests/s of one replica behind the Serve path.

    The replica's own limit is full batches back to back (``max_batch_size`` rows per
    ``batch_ms``). The path's limit is the no-op replica's. They are combined as work on shared
    cores (1/(1/a + 1/b)): on a small node the proxy, the router and the replica take turns on
    the same CPUs; on a large one this underestimates, which the planner turns into a spare
    replica, not a missed SLO.
    """
    compute_rps = 1000.0 * sample.max_batch_size / max(sample.batch_ms, 1e-3)
    path_rps = max(overhead.capacity_rps, 1e-3)
    return round(1.0 / (1.0 / compute_rps + 1.0 / path_rps), 1)


def profile_points(
    overhead: ServeOverhead, samples: Sequence[ComputeSample]
) -> tuple[ProfilePoint, ...]:
    """Predicted ``ProfilePoint``s: the Serve path's latency plus the model's compute."""
    return tuple(
        ProfilePoint(
            variant=s.variant,
            num_cpus=s.num_cpus,
            num_gpus=s.num_gpus,
            max_batch_size=s.max_batch_size,
            p50_ms=round(overhead.p50_ms + s.p50_ms, 3),
            p99_ms=round(overhead.p99_ms + s.p99_ms, 3),
            capacity_rps=replica_capacity_rps(overhead, s),
            row_ms=round(s.row_ms, 4),
        )
        for s in samples
    )


def build_profile(
    overhead: ServeOverhead,
    samples: Sequence[ComputeSample],
    accuracy: Mapping[str, float],
    size_bytes: Mapping[str, int],
) -> ServingProfile:
    """The whole profile: one ``VariantInfo`` per variant with its own measured accuracy and
    its cold start (the path's replica start plus the variant's slowest load), and the points.
    Variants without an accuracy (not evaluated) are left out."""
    variants = []
    for name in dict.fromkeys(s.variant for s in samples):
        if name not in accuracy:
            continue
        load = max(s.load_s for s in samples if s.variant == name)
        variants.append(
            VariantInfo(
                name=name,
                accuracy=float(accuracy[name]),
                cold_start_s=round(overhead.cold_start_s + load, 3),
                size_bytes=int(size_bytes.get(name, 0)),
            )
        )
    keep = {v.name for v in variants}
    return ServingProfile(
        tuple(variants),
        profile_points(overhead, [s for s in samples if s.variant in keep]),
        overhead_p50_ms=overhead.p50_ms,
    )


def node_key(nodes: Sequence[Mapping[str, float]], resource: str = "") -> str:
    """A stable name for the node type(s) replicas can land on: the distinct resource shapes
    of the alive nodes that have CPUs (and ``resource`` when placement asks for one)."""
    shapes = sorted(
        {
            json.dumps(
                {
                    k: round(float(v), 1)
                    for k, v in sorted(n.items())
                    if not k.startswith("node:")
                    and k != "object_store_memory"
                    and not k.startswith("memory")
                },
                sort_keys=True,
            )
            for n in nodes
            if n.get("CPU", 0) > 0 and (not resource or n.get(resource, 0) > 0)
        }
    )
    return hashlib.sha256("|".join(shapes).encode()).hexdigest()[:16]


def profile_key(
    *,
    model_signature: str,
    variants: Sequence[str],
    cpus: Sequence[float],
    batches: Sequence[int],
    node: str,
) -> str:
    """Everything the measured latencies depend on: each variant's architecture and weight
    shapes, the replica shapes and batch sizes measured, and the node type. Accuracy is not
    in it: it is measured per version (in ``evaluate``), never reused."""
    blob = json.dumps(
        {
            "model": model_signature,
            "variants": sorted(variants),
            "cpus": sorted(float(c) for c in cpus),
            "batches": sorted(int(b) for b in batches),
            "node": node,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]
