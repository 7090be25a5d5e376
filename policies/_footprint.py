"""What served models hold on the cluster, and whether a new need fits beside them.

Every Serve replica reserves its CPUs (and GPUs) for as long as it runs, traffic or not, and
those are gone from training, profiling and new deployments. ``ServingFootprint`` is that
reservation per model (router and version applications together), read from Serve's own
status; ``capacity_check`` says whether a need fits in what is free and, when it does not,
names which models hold what and how to free them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

#: Separates a model name from its version in a version application's name
#: (``slaflow-digits+v3``). Model names cannot contain it, so no model's name is another
#: model's version application.
VERSION_SEP: Final = "+"
#: Applications slaflow runs for itself (the Serve path's overhead probe), not models.
INTERNAL_PREFIX: Final = "slaflow" + VERSION_SEP


def version_app(model: str, version: str) -> str:
    """Name of the Serve application holding one version's tiers."""
    return f"{model}{VERSION_SEP}v{version}"


def parse_version_app(app: str) -> tuple[str, str] | None:
    """``(model, version)`` of a version application's name, or None for other names."""
    model, sep, rest = app.rpartition(VERSION_SEP)
    if not sep or not model or not rest.startswith("v") or len(rest) < 2:
        return None
    return model, rest[1:]


def model_of_app(app: str) -> str:
    """The model an application serves: itself for a router, the prefix for a version."""
    parsed = parse_version_app(app)
    return parsed[0] if parsed else app


@dataclass(frozen=True)
class ServedDeployment:
    """One Serve deployment now: its application, name, running replicas and their shape."""

    app: str
    deployment: str
    replicas: int
    num_cpus: float
    num_gpus: float = 0.0

    @property
    def cpus(self) -> float:
        return self.replicas * self.num_cpus

    @property
    def gpus(self) -> float:
        return self.replicas * self.num_gpus


@dataclass(frozen=True)
class ServingFootprint:
    deployments: tuple[ServedDeployment, ...] = ()

    @classmethod
    def of(cls, deployments: Iterable[ServedDeployment]) -> ServingFootprint:
        return cls(tuple(sorted(deployments, key=lambda d: (d.app, d.deployment))))

    @property
    def cpus(self) -> float:
        return round(sum(d.cpus for d in self.deployments), 4)

    @property
    def gpus(self) -> float:
        return round(sum(d.gpus for d in self.deployments), 4)

    def by_model(self) -> dict[str, float]:
        """CPUs held per model, largest first."""
        out: dict[str, float] = {}
        for d in self.deployments:
            out[model_of_app(d.app)] = round(out.get(model_of_app(d.app), 0.0) + d.cpus, 4)
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def of_model(self, model: str) -> ServingFootprint:
        return ServingFootprint(tuple(d for d in self.deployments if model_of_app(d.app) == model))

    def describe(self, limit: int = 6) -> str:
        """``slaflow-digits 0.55 CPU (v1 warm 1x0.5, router 1x0.05); ...``"""
        if not self.deployments:
            return "nothing is served"
        parts = []
        for model, cpus in list(self.by_model().items())[:limit]:
            pieces = []
            for d in self.of_model(model).deployments:
                if not d.replicas:
                    continue
                parsed = parse_version_app(d.app)
                where = f"v{parsed[1]} {d.deployment}" if parsed else "router"
                pieces.append(f"{where} {d.replicas}x{d.num_cpus:g}")
            parts.append(f"{model} {cpus:g} CPU ({', '.join(pieces) or 'idle at zero'})")
        more = len(self.by_model()) - limit
        return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class CapacityCheck:
    fits: bool
    message: str


def capacity_check(
    *,
    need_cpus: float,
    free_cpus: float,
    footprint: ServingFootprint,
    what: str,
    need_gpus: float = 0.0,
    free_gpus: float = 0.0,
) -> CapacityCheck:
    """Does ``need`` fit in what the cluster has free now? If not, say who holds what.

    ``free_cpus`` is the cluster's unreserved CPUs (what Ray reports available); served
    models' CPUs are already out of it, so the message names them as the first thing to free.
    """
    short_cpu = need_cpus - free_cpus > 1e-9
    short_gpu = need_gpus - free_gpus > 1e-9
    held = (
        f"served models hold {footprint.cpus:g} CPU"
        + (f" and {footprint.gpus:g} GPU" if footprint.gpus else "")
        + f": {footprint.describe()}"
    )
    if not short_cpu and not short_gpu:
        return CapacityCheck(
            True,
            f"{what} needs {need_cpus:g} CPU"
            + (f" + {need_gpus:g} GPU" if need_gpus else "")
            + f", {free_cpus:g} free; {held}",
        )
    lacking = (
        f"{need_cpus:g} CPU ({free_cpus:g} free)"
        if short_cpu
        else f"{need_gpus:g} GPU ({free_gpus:g} free)"
    )
    fix = (
        "take a model off the endpoint (`make undeploy MODEL=<name>` or the ml_undeploy "
        "DAG; its registry entries stay)"
        if footprint.deployments
        else "wait for the running jobs to end"
    )
    return CapacityCheck(
        False,
        f"{what} needs {lacking} on the Ray cluster; {held}. Fix: "
        f"{fix}, add nodes, or ask for less",
    )
