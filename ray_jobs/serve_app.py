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


@serve.deployment(
    max_ongoing_requests=32,
    max_queued_requests=256,
    ray_actor_options={"num_cpus": 0.5},
    health_check_period_s=5,
)
class ModelServer:
    def __init__(self, model_uri: str, tracking_uri: str, model_name: str, version: str) -> None:
        import mlflow

        from ray_jobs.model_format import Predictor, find_model_dir

        # Both, explicitly: a stray MLFLOW_REGISTRY_URI on the node would otherwise send
        # model lookups to another registry.
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self._tmp = tempfile.TemporaryDirectory(prefix="slaflow-serve-")
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=self._tmp.name)
        self._predictor = Predictor(find_model_dir(local))
        self._meta = self._predictor.metadata
        self._predictor.predict_proba(np.zeros((1, self._meta.n_features)))  # trace once, now
        self._info = {"model_name": model_name, "model_version": version, "model_uri": model_uri,
                      "features": list(self._meta.feature_names),
                      "classes": list(self._meta.classes)}

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _predict(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(b) for b in batches]
        proba = self._predictor.predict_proba(np.concatenate(batches))
        return np.split(proba, np.cumsum(sizes)[:-1])

    async def __call__(self, request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse(self._info)
        if request.method != "POST":
            return JSONResponse({"error": "use POST with a JSON body, or GET for model info"},
                                status_code=405)
        body = await request.body()
        try:
            if len(body) > MAX_BODY_BYTES:
                raise BadRequest(f"body is {len(body)} bytes; at most {MAX_BODY_BYTES}", 413)
            try:
                payload = json.loads(body)
            except ValueError as exc:
                raise BadRequest(f"body is not valid JSON ({exc.msg} at char {exc.pos})") from exc
            x = parse_instances(payload, self._meta.feature_names)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        proba = await self._predict(x)
        classes = self._meta.classes
        return JSONResponse({
            "predictions": [classes[i] for i in proba.argmax(axis=1)],
            "probabilities": np.round(proba, 6).tolist(),
            "model_name": self._info["model_name"],
            "model_version": self._info["model_version"],
        })


def build_app(model_uri: str, tracking_uri: str, model_name: str, version: str,
              num_replicas: int = 1, node_resource: str = "") -> Any:
    """The application; ``node_resource`` pins replicas to nodes that have that resource."""
    actor_options: dict[str, Any] = {"num_cpus": 0.5}
    if node_resource:
        actor_options["resources"] = {node_resource: 0.01}
    return ModelServer.options(num_replicas=num_replicas,
                               ray_actor_options=actor_options).bind(
        model_uri, tracking_uri, model_name, version)
