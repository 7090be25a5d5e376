"""Ray Serve application serving one registered model version over HTTP.

``POST /<model_name>`` with ``{"instances": [[f1, f2, ...], ...]}`` (or rows as objects keyed
by feature name) answers ``{"predictions": [...], "probabilities": [[...]], ...}``.
``GET /<model_name>`` describes the model (version, features, classes).
Bad requests get HTTP 400/413 with a message saying what to fix; overload is shed with 503 by
the bounded queue. Predictions go through the SavedModel's compiled signature, batched across
concurrent requests with ``@serve.batch``.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections import deque
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

MAX_ROWS = 1024
MAX_BODY_BYTES = 4 * 1024 * 1024


class BadRequest(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_instances(payload: Any, feature_names: tuple[str, ...]) -> np.ndarray:
    """Validate a request body into float32 [rows, features]; raise BadRequest if it is off."""
    n = len(feature_names)
    example = '{"instances": [[' + ", ".join(["0.0"] * min(n, 3)) + (", ..." if n > 3 else "") \
        + "]]}"
    if not isinstance(payload, dict) or "instances" not in payload:
        raise BadRequest(f"body must be a JSON object with an 'instances' list, e.g. {example}")
    rows = payload["instances"]
    if not isinstance(rows, list) or not rows:
        raise BadRequest("'instances' must be a non-empty list of rows")
    if len(rows) > MAX_ROWS:
        raise BadRequest(f"'instances' has {len(rows)} rows; at most {MAX_ROWS} per request: "
                         f"split the request", status=413)
    out = np.empty((len(rows), n), dtype="float32")
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            missing = [f for f in feature_names if f not in row]
            if missing:
                raise BadRequest(f"instances[{i}] lacks feature(s) {missing[:5]}: "
                                 f"give all {n} features by name or as a list")
            row = [row[f] for f in feature_names]
        if not isinstance(row, list) or len(row) != n:
            got = len(row) if isinstance(row, list) else type(row).__name__
            raise BadRequest(f"instances[{i}] must be a list of {n} numbers (features "
                             f"{feature_names[0]}..{feature_names[-1]}), got {got}")
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise BadRequest(f"instances[{i}][{j}] ({feature_names[j]}) must be a finite "
                                 f"number, got {v!r}")
        out[i] = row
    return out


class _Window:
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
        return {"arrival_rps": len(lat) / self.span_s,
                "tail_ms": float(np.percentile(lat, percentile)), "requests": float(len(lat))}


def _load_predictor(model_uri: str, tracking_uri: str, variant: str, variant_uri: str,
                    into: str) -> tuple[Any, Any]:
    import mlflow

    from ray_jobs.model_format import ModelMetadata, Predictor, find_model_dir
    from ray_jobs.variants import VARIANT_FULL, Int8Predictor

    # Both, explicitly: a stray MLFLOW_REGISTRY_URI on the node would otherwise send
    # model lookups to another registry.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if variant == VARIANT_FULL:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=into)
        predictor = Predictor(find_model_dir(local))
        return predictor, predictor.metadata
    npz = mlflow.artifacts.download_artifacts(artifact_uri=variant_uri, dst_path=into)
    meta_uri = variant_uri.rsplit("/", 1)[0] + "/slaflow_model.json"
    meta = mlflow.artifacts.download_artifacts(artifact_uri=meta_uri, dst_path=into)
    with open(meta) as fh:
        metadata = ModelMetadata.from_json(fh.read())
    return Int8Predictor(npz), metadata


@serve.deployment(
    max_ongoing_requests=32,
    max_queued_requests=256,
    ray_actor_options={"num_cpus": 0.5},
    health_check_period_s=5,
    # ``serve.run`` gives every deployment a new code version, so each redeploy (a canary
    # step, a rollback) restarts the replicas; with a surge the old ones keep answering
    # until their replacements are ready, instead of stopping first (Serve's default).
    max_surge_percent=100,
)
class ModelServer:
    """One model version (one variant) behind HTTP, or behind a ``ModelRouter`` handle.

    ``user_config`` (``{"max_batch_size": n, "batch_wait_timeout_s": s}``) retunes batching
    in place, without restarting replicas. ``record_autoscaling_stats`` reports the arrival
    rate and tail latency of the last 10 s to the SLO autoscaling policy.
    """

    def __init__(self, model_uri: str, tracking_uri: str, model_name: str, version: str,
                 variant: str = "full", variant_uri: str = "", tier: str = "warm") -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="slaflow-serve-")
        if variant == "full":
            _limit_threads()
        self._predictor, self._meta = _load_predictor(model_uri, tracking_uri, variant,
                                                      variant_uri, self._tmp.name)
        self._predictor.predict_proba(np.zeros((1, self._meta.n_features)))  # trace once, now
        self._info = {"model_name": model_name, "model_version": version, "model_uri": model_uri,
                      "variant": variant, "tier": tier,
                      "features": list(self._meta.feature_names),
                      "classes": list(self._meta.classes)}
        self._window = _Window()

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

    async def __call__(self, request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse(self._info)
        if request.method != "POST":
            return JSONResponse({"error": "use POST with a JSON body, or GET for model info"},
                                status_code=405)
        t0 = time.monotonic()
        try:
            x = parse_body(await request.body(), self._meta.feature_names)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        proba = await self._predict(x)
        self._window.add(t0, (time.monotonic() - t0) * 1000)
        return JSONResponse(answer(proba, self._meta.classes, self._info))


def parse_body(body: bytes, feature_names: tuple[str, ...]) -> np.ndarray:
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"body is {len(body)} bytes; at most {MAX_BODY_BYTES}", 413)
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"body is not valid JSON ({exc.msg} at char {exc.pos})") from exc
    return parse_instances(payload, feature_names)


def answer(proba: np.ndarray, classes: Any, info: dict[str, Any]) -> dict[str, Any]:
    return {"predictions": [classes[i] for i in proba.argmax(axis=1)],
            "probabilities": np.round(proba, 6).tolist(),
            "model_name": info["model_name"], "model_version": info["model_version"]}


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.1})
class NoopServer:
    """Answers without a model: the HTTP + Serve floor the benchmarks compare with."""

    async def __call__(self, request: Request) -> JSONResponse:
        if request.method == "POST":
            await request.body()
        return JSONResponse({"predictions": [0], "model_version": "noop"})


def _limit_threads() -> None:
    """TensorFlow uses as many threads as the replica has CPUs (at least 1), so a profiled
    shape means the same thing on any node."""
    try:
        import ray
        import tensorflow as tf

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        n = max(1, math.ceil(cpus))
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except (RuntimeError, ImportError):  # already initialised, or not in a Ray worker
        pass


def wait_running(app: str, timeout_s: float = 300.0, poll_s: float = 0.5) -> None:
    """Until Serve reports ``app`` RUNNING: every deployment at its new version, the replicas
    it replaced stopping or gone. A ``serve.run`` redeploy restarts the replicas (new code
    version) and with a surge the old ones answer while the new ones load, so answering alone
    does not mean the new settings serve."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(app)
        if status is not None and status.status == "RUNNING":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve application {app} is not RUNNING after {timeout_s:.0f}s "
                               f"(status {status.status if status else 'missing'}); see the "
                               f"Ray dashboard's Serve tab")
        time.sleep(poll_s)


def build_app(model_uri: str, tracking_uri: str, model_name: str, version: str,
              num_replicas: int = 1, node_resource: str = "") -> Any:
    """The application; ``node_resource`` pins replicas to nodes that have that resource."""
    actor_options: dict[str, Any] = {"num_cpus": 0.5}
    if node_resource:
        actor_options["resources"] = {node_resource: 0.01}
    return ModelServer.options(num_replicas=num_replicas,
                               ray_actor_options=actor_options).bind(
        model_uri, tracking_uri, model_name, version)
