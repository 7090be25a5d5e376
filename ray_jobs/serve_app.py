"""The replicas that serve one model version (one variant), behind a ``ModelRouter``.

Each version is a Serve application of its own, ``<model>+v<version>`` (no HTTP route), whose
deployments are its tiers (``warm``, ``batch``, ``elastic``): the router finds them by name.
Predictions go through the SavedModel's compiled signature (or the int8 NumPy path), batched
across concurrent requests with ``@serve.batch``, never ``model.predict`` per request.
The answer's shape lives here too; requests are validated once, by the router's app
(``ray_jobs.serve_api``).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections import deque
from typing import Any

import numpy as np
from ray import serve

from policies import ROUTE_WARM, TierSettings


class LatencyWindow:
    """Arrivals and latencies of the last ``span_s`` seconds (for the autoscaler and canary)."""

    def __init__(self, span_s: float = 10.0, cap: int = 20_000) -> None:
        self.span_s = span_s
        self._events: deque[tuple[float, float]] = deque(maxlen=cap)

    def add(self, t: float, latency_ms: float) -> None:
        self._events.append((t, latency_ms))

    def stats(self, now: float, percentile: float = 99.0) -> dict[str, float]:
        while self._events and self._events[0][0] < now - self.span_s:
            self._events.popleft()
        if not self._events:
            return {"arrival_rps": 0.0, "tail_ms": 0.0, "requests": 0.0}
        lat = np.fromiter((e[1] for e in self._events), dtype="float64")
        return {
            "arrival_rps": len(lat) / self.span_s,
            "tail_ms": float(np.percentile(lat, percentile)),
            "requests": float(len(lat)),
        }


def _load_predictor(
    model_uri: str,
    tracking_uri: str,
    variant: str,
    variant_uri: str,
    into: str,
    model_sha256: str = "",
    variant_sha256: str = "",
) -> tuple[Any, Any]:
    import mlflow

    from ray_jobs.model_format import (
        SAVED_MODEL_DIR,
        ModelMetadata,
        fetch_verified,
        find_model_dir,
        open_predictor,
    )
    from ray_jobs.variants import VARIANT_FULL, LiteRTPredictor

    # Both, explicitly: a stray MLFLOW_REGISTRY_URI on the node would otherwise send
    # model lookups to another registry.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if variant == VARIANT_FULL:
        local = find_model_dir(fetch_verified(model_uri, into, model_sha256))
        if (local / SAVED_MODEL_DIR).exists():  # TensorFlow only for the models that need it
            _limit_threads()
        predictor = open_predictor(local)
        return predictor, predictor.metadata
    # the variant's folder (flatbuffer and metadata), checked as the full model is
    folder_uri, name = variant_uri.rsplit("/", 1)
    folder = fetch_verified(folder_uri, into, variant_sha256)
    metadata = ModelMetadata.from_json((folder / "slaflow_model.json").read_text())
    return LiteRTPredictor(str(folder / name), threads=_replica_threads()), metadata


@serve.deployment(
    max_ongoing_requests=32,
    max_queued_requests=256,
    ray_actor_options={"num_cpus": 0.5},
    health_check_period_s=5,
    # A version's application is deployed once; a retried deploy of the same version gets a
    # new code version from ``serve.run`` and restarts the replicas: with a surge the old
    # ones keep answering until their replacements are ready (Serve's default stops first).
    max_surge_percent=100,
)
class ModelServer:
    """One tier of one model version (one variant), called by the ``ModelRouter``.

    ``user_config`` (``{"max_batch_size": n, "batch_wait_timeout_s": s}``) retunes batching
    in place, without restarting replicas. ``record_autoscaling_stats`` reports the arrival
    rate and tail latency of the last 10 s to the SLO autoscaling policy.
    """

    def __init__(
        self,
        model_uri: str,
        tracking_uri: str,
        model_name: str,
        version: str,
        variant: str = "full",
        variant_uri: str = "",
        tier: str = "warm",
        siblings: dict[str, Any] | None = None,
        model_sha256: str = "",
        variant_sha256: str = "",
    ) -> None:
        # ``siblings``: the version's other tiers, bound here only so that Serve deploys
        # them in the same application; the router calls each tier by name, not through us.
        self._tmp = tempfile.TemporaryDirectory(prefix="slaflow-serve-")
        self._predictor, self._meta = _load_predictor(
            model_uri,
            tracking_uri,
            variant,
            variant_uri,
            self._tmp.name,
            model_sha256,
            variant_sha256,
        )
        self._predictor.predict_proba(np.zeros((1, self._meta.n_features)))  # trace once, now
        self._info = {
            "model_name": model_name,
            "model_version": version,
            "model_uri": model_uri,
            "variant": variant,
            "tier": tier,
            "features": list(self._meta.feature_names),
            "classes": list(self._meta.classes),
            "task": self._meta.task,
            "encoding": self._meta.encoding,
            "input_columns": list(self._meta.encoder().input_columns),
        }
        self._window = LatencyWindow()

    def reconfigure(self, config: dict[str, Any]) -> None:
        if "max_batch_size" in config:
            self._predict.set_max_batch_size(int(config["max_batch_size"]))
        if "batch_wait_timeout_s" in config:
            self._predict.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    def record_autoscaling_stats(self) -> dict[str, float]:
        s = self._window.stats(time.monotonic())
        return {"arrival_rps": s["arrival_rps"], "tail_ms": s["tail_ms"]}

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _predict(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(b) for b in batches]
        proba = self._predictor.predict_proba(np.concatenate(batches))
        return np.split(proba, np.cumsum(sizes)[:-1])

    def info(self) -> dict[str, Any]:
        return self._info

    async def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for validated rows (the router's path)."""
        t0 = time.monotonic()
        out = await self._predict(x)
        self._window.add(t0, (time.monotonic() - t0) * 1000)
        return out


def answer(proba: np.ndarray, classes: Any, info: dict[str, Any]) -> dict[str, Any]:
    if info.get("task") == "regression":  # one value per row
        return {
            "predictions": [float(v) for v in proba[:, 0]],
            "model_name": info["model_name"],
            "model_version": info["model_version"],
        }
    return {
        "predictions": [classes[i] for i in proba.argmax(axis=1)],
        "probabilities": np.round(proba, 6).tolist(),
        "model_name": info["model_name"],
        "model_version": info["model_version"],
    }


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.1})
class NoopServer:
    """Answers without a model, as a version's tier behind the router: the floor of the Serve
    path (proxy, router, replica) that every model adds its compute to."""

    _INFO = {
        "model_name": "noop",
        "model_version": "0",
        "variant": "noop",
        "tier": "warm",
        "features": ["x"],
        "classes": [0, 1],
    }

    def info(self) -> dict[str, Any]:
        return self._INFO

    async def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), 2), dtype="float32")
        out[:, 0] = 1.0
        return out

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {"arrival_rps": 0.0, "tail_ms": 0.0}


def _replica_threads() -> int:
    """Threads a replica computes with: its CPUs, rounded up (at least 1)."""
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except RuntimeError:  # not in a Ray worker
        cpus = 1.0
    return max(1, math.ceil(cpus))


def _limit_threads() -> None:
    """TensorFlow uses as many threads as the replica has CPUs (at least 1), so a profiled
    shape means the same thing on any node."""
    try:
        import tensorflow as tf

        n = _replica_threads()
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except (RuntimeError, ImportError):  # already initialised
        pass


def tier_options(tier: TierSettings) -> dict[str, Any]:
    """``ModelServer.options`` keyword arguments of one tier: the policy's numbers as Serve
    settings (replica shape, queue bounds, batching through ``user_config``, and either a
    fixed replica count or the SLO autoscaler's bounds)."""
    from ray_jobs.serve_policy import autoscaling_config

    actor: dict[str, Any] = {"num_cpus": tier.num_cpus}
    if tier.num_gpus:
        actor["num_gpus"] = tier.num_gpus
    if tier.resource:
        actor["resources"] = {tier.resource: 0.001}
    opts: dict[str, Any] = {
        "name": tier.route,
        "ray_actor_options": actor,
        "max_ongoing_requests": tier.max_ongoing_requests,
        "max_queued_requests": tier.max_queued_requests,
        "user_config": {
            "max_batch_size": tier.max_batch_size,
            "batch_wait_timeout_s": tier.batch_wait_timeout_s,
        },
    }
    if tier.autoscaler is None:
        opts["num_replicas"] = tier.replicas if tier.replicas is not None else 1
    elif tier.autoscaling_policy == "serve_default":
        opts["autoscaling_config"] = {
            "min_replicas": tier.autoscaler.min_replicas,
            "max_replicas": tier.autoscaler.max_replicas,
            "initial_replicas": tier.initial_replicas,
        }
    else:
        opts["autoscaling_config"] = autoscaling_config(tier.autoscaler, tier.initial_replicas)
    return opts


def build_version_app(model_name: str, tracking_uri: str, spec: dict[str, Any]) -> Any:
    """The Serve application of one version: ``spec`` is ``{"version", "model_uri",
    "variant", "variant_uri", "model_sha256", "variant_sha256", "tiers": [TierSettings as
    dicts]}``. The ``warm`` tier (or the only one) is the ingress (the application has no
    HTTP route); the others are bound to it. Every tier checks the artifacts it downloads
    against ``model_sha256`` (the full model) or ``variant_sha256`` (the variant's folder),
    when given, before it loads them."""
    tiers = [TierSettings.from_dict(t) for t in spec["tiers"]]
    args = (
        spec["model_uri"],
        tracking_uri,
        model_name,
        str(spec["version"]),
        spec.get("variant", "full"),
        spec.get("variant_uri", ""),
    )
    ingress = next((t for t in tiers if t.route == ROUTE_WARM), tiers[0])
    digests = {
        "model_sha256": str(spec.get("model_sha256") or ""),
        "variant_sha256": str(spec.get("variant_sha256") or ""),
    }
    bound = {
        t.route: ModelServer.options(**tier_options(t)).bind(*args, t.route, **digests)
        for t in tiers
        if t is not ingress
    }
    return ModelServer.options(**tier_options(ingress)).bind(
        *args, ingress.route, siblings=bound, **digests
    )


def overhead_app(num_cpus: float, resource: str = "") -> Any:
    """A version application whose only tier answers without a model (``NoopServer``): what
    the Serve path costs on its own."""
    actor: dict[str, Any] = {"num_cpus": num_cpus}
    if resource:
        actor["resources"] = {resource: 0.001}
    return NoopServer.options(
        name=ROUTE_WARM, ray_actor_options=actor, max_ongoing_requests=64
    ).bind()
