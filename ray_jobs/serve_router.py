"""The ingress of one model: ``ModelRouter``, the only HTTP route, ``/<model>``.

``POST /<model>`` is validated once here (4xx with the reason), then sent:
- to a version: the primary, or the canary candidate for ``share`` of the requests (its
  answers are compared with the primary's on the same rows, for the canary verdict);
- to a tier of that version by ``policies.route_request`` (StraightLine): ``warm`` (always-on,
  small batches), ``batch`` (large inputs, big batches) or ``elastic`` (scale-to-zero), with
  thresholds computed from the profile.
Each version is its own Serve application (``<model>+v<version>``); the router finds its tiers
by name, so deploying or removing a version never touches the router's code, and a canary
step (primary, candidate, share) is a change of the router's ``user_config`` alone, which Serve
applies with ``reconfigure()`` on the running replica: no replica restarts (see
``ROUTER_CODE_VERSION``). A request whose replica dies mid-flight is retried once (predictions
are idempotent); a failing canary answer, or one slower than ``candidate_timeout_s``, falls back
to the primary, so the client sees no failure.

``GET /<model>`` describes the primary; ``GET /<model>/-/stats`` gives per-version and
per-route counts, errors and tail latency since the routing last changed (what the canary
check and the benchmarks read).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request
from starlette.responses import JSONResponse

from policies import ROUTE_WARM, CallerRates, RouterThresholds, route_request, version_app
from ray_jobs.serve_app import MAX_BODY_BYTES, BadRequest, LatencyWindow, answer, parse_body

#: A hint for routing only (StraightLine's request frequency): a client that names itself
#: gets its own rate, and a wrong name changes which tier answers it, never whether it is
#: answered. Without it the client's address is the caller.
CALLER_HEADER = "x-slaflow-caller"
#: Seconds a request may wait on the primary before the router answers 504.
REQUEST_TIMEOUT_S = 30.0


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it passes ``MAX_BODY_BYTES``: a declared
    Content-Length over the limit is refused before any byte is read, and a streamed body is
    cut off at the limit rather than held whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(f"body is {declared} bytes; at most {MAX_BODY_BYTES}", 413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(f"body is over {MAX_BODY_BYTES} bytes: split the request", 413)
        chunks.append(chunk)
    return b"".join(chunks)


#: The router's code version, pinned to this file's content. ``serve.run`` otherwise gives
#: every deployment a fresh random version on each call, and a new code version restarts the
#: replicas even when only ``user_config`` changed. With the version pinned, a redeploy that
#: changes only the routing (a canary step, a switch, a rollback) is a lightweight update:
#: Serve calls ``reconfigure`` on the running router. Serve 2.60 accepts a version only through
#: the internal flag of ``Deployment.options``; the integration tests check that a canary step
#: keeps every replica (router and model) alive.
ROUTER_CODE_VERSION = "router-" + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


@serve.deployment(
    max_ongoing_requests=256,
    max_queued_requests=1024,
    ray_actor_options={"num_cpus": 0.05},
    health_check_period_s=5,
    max_surge_percent=100,
)
class ModelRouter:
    def __init__(self, model_name: str) -> None:
        self._model = model_name
        self._cfg: dict[str, Any] = {}
        self._handles: dict[tuple[str, str], Any] = {}
        self._thresholds = RouterThresholds(large_rows=1024, frequent_rps=1.0)
        self._rates = CallerRates()
        self._in_flight: dict[tuple[str, str], int] = defaultdict(int)
        self._info: dict[str, dict[str, Any]] = {}
        self._encoders: dict[str, Any] = {}
        # (version, route) handles made but not yet used: a handle's first call also sets up
        # its connection to the replicas (~0.1-0.2 s here), a one-time cost of this router,
        # not of the version, so that call's latency stays out of the canary's window.
        self._fresh: set[tuple[str, str]] = set()
        self._windows: dict[str, LatencyWindow] = defaultdict(lambda: LatencyWindow(span_s=600.0))
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._rng = random.Random(0)
        self._shadows: set[asyncio.Task[None]] = set()

    def reconfigure(self, config: dict[str, Any]) -> None:
        versions = {str(v): dict(d) for v, d in (config.get("versions") or {}).items()}
        for key in ("primary", "candidate"):
            v = config.get(key)
            if v is not None and str(v) not in versions:
                raise ValueError(
                    f"router config names {key} v{v}, which is not among the "
                    f"versions it routes to ({sorted(versions)})"
                )
        routing = ("primary", "candidate", "share")
        if any(config.get(k) != self._cfg.get(k) for k in routing):
            self._windows.clear()  # each canary step is judged on its own traffic
            self._counts.clear()
        self._cfg = {**config, "versions": versions}
        self._handles = {k: h for k, h in self._handles.items() if k[0] in versions}
        self._info = {v: i for v, i in self._info.items() if v in versions}
        t = config.get("thresholds") or {}
        if t:
            self._thresholds = RouterThresholds(int(t["large_rows"]), float(t["frequent_rps"]))

    def _handle(self, version: str, route: str) -> Any:
        key = (version, route)
        if key not in self._handles:
            self._handles[key] = serve.get_deployment_handle(
                route, app_name=version_app(self._model, version)
            )
            self._fresh.add(key)
        return self._handles[key]

    def _routes(self, version: str) -> list[str]:
        return list(self._cfg["versions"][version].get("routes") or [ROUTE_WARM])

    async def _describe(self, version: str) -> dict[str, Any]:
        if version not in self._info:
            routes = self._routes(version)
            route = ROUTE_WARM if ROUTE_WARM in routes else routes[0]
            self._info[version] = await self._handle(version, route).info.remote()
        return self._info[version]

    def _encoder(self, meta: dict[str, Any]) -> Any:
        """The version's feature encoder (raw rows -> model inputs), built once per version."""
        key = str(meta.get("model_version"))
        if key not in self._encoders:
            from ray_jobs.features import FeatureEncoder

            self._encoders[key] = FeatureEncoder.of_profile(
                {"encoding": meta.get("encoding"), "feature_names": meta["features"]}
            )
        return self._encoders[key]

    def _choose_version(self) -> str:
        cand = self._cfg.get("candidate")
        if cand is not None and self._rng.random() < float(self._cfg.get("share", 0.0)):
            return str(cand)
        return str(self._cfg["primary"])

    def _choose_route(self, version: str, rows: int, caller: str) -> str:
        routes = self._routes(version)
        warm_cap = int(self._cfg["versions"][version].get("warm_max_in_flight", 64))
        busy = self._in_flight[(version, ROUTE_WARM)] >= warm_cap
        route = route_request(
            rows, self._rates.observe(caller, time.monotonic()), busy, self._thresholds
        )
        return route if route in routes else ROUTE_WARM if ROUTE_WARM in routes else routes[0]

    async def _call(self, version: str, route: str, x: np.ndarray) -> np.ndarray:
        handle = self._handle(version, route)
        self._in_flight[(version, route)] += 1
        try:
            try:
                return await handle.predict.remote(x)
            except (asyncio.CancelledError, BackPressureError):
                raise
            except Exception:  # replica lost mid-flight: retry once elsewhere (idempotent)
                self._counts[version]["retries"] += 1
                return await handle.predict.remote(x)
        finally:
            self._in_flight[(version, route)] -= 1

    async def _shadow(
        self, primary: str, version: str, x: np.ndarray, proba: np.ndarray, caller: str
    ) -> None:
        """The primary's answer on the canary's rows: does the candidate answer alike?"""
        try:
            ref = await self._call(primary, self._choose_route(primary, len(x), caller), x)
        except Exception:
            return
        if proba.shape[1] == 1:  # values: apart by more than the models' errors allow
            apart = np.abs(ref[:, 0] - proba[:, 0]) > float(self._cfg.get("tolerance", np.inf))
        else:
            apart = ref.argmax(axis=1) != proba.argmax(axis=1)
        if apart.mean() > 0.5:
            self._counts[version]["disagreements"] += 1

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        q = float(self._cfg.get("percentile", 99))
        return {
            "config": self._cfg,
            "versions": {
                v: {**dict(self._counts[v]), **self._windows[v].stats(now, q)}
                for v in self._cfg.get("versions", {})
            },
        }

    async def __call__(self, request: Request) -> JSONResponse:
        primary = str(self._cfg["primary"])
        if request.method == "GET":
            if request.url.path.rstrip("/").endswith("/-/stats"):
                return JSONResponse(self.stats())
            info = dict(await self._describe(primary))
            info.update(
                routes=sorted(self._routes(primary)),
                canary={
                    "candidate": self._cfg.get("candidate"),
                    "share": self._cfg.get("share", 0.0),
                },
                thresholds=self._thresholds.to_dict(),
            )
            return JSONResponse(info)
        if request.method != "POST":
            return JSONResponse(
                {"error": "use POST with a JSON body, or GET for model info"}, status_code=405
            )
        t0 = time.monotonic()
        meta = await self._describe(primary)
        try:
            body = await read_body(request)
            x = parse_body(body, tuple(meta["features"]), self._encoder(meta))
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        caller = request.headers.get(CALLER_HEADER) or (
            request.client.host if request.client else "anonymous"
        )
        version = self._choose_version()
        route = self._choose_route(version, len(x), caller)
        self._counts[version][f"route_{route}"] += 1
        self._counts[version]["requests"] += 1
        try:
            if version == primary:
                # Bounded: a request never waits on a stuck replica longer than this.
                proba = await asyncio.wait_for(
                    self._call(version, route, x),
                    timeout=float(self._cfg.get("request_timeout_s", REQUEST_TIMEOUT_S)),
                )
            else:  # a canary that hangs (or went away mid-switch) must not hold the caller
                proba = await asyncio.wait_for(
                    self._call(version, route, x),
                    timeout=float(self._cfg.get("candidate_timeout_s", 10.0)),
                )
        except BackPressureError:
            if version != primary:
                self._counts[version]["errors"] += 1
            self._counts[version]["shed"] += 1
            return JSONResponse(
                {
                    "error": f"overloaded: the {route} tier's queue is full "
                    f"(bounded to answer within the SLO); retry later"
                },
                status_code=503,
                headers={"Retry-After": "1"},
            )
        except Exception as exc:
            if version == primary and isinstance(exc, TimeoutError):
                self._counts[primary]["errors"] += 1
                return JSONResponse(
                    {
                        "error": f"the model did not answer within "
                        f"{self._cfg.get('request_timeout_s', REQUEST_TIMEOUT_S):g} s; "
                        f"retry later"
                    },
                    status_code=504,
                )
            if version == primary:
                raise
            # A canary that failed or was slower than candidate_timeout_s: the primary answers.
            self._counts[version]["errors"] += 1
            version, route = primary, self._choose_route(primary, len(x), caller)
            proba = await self._call(version, route, x)
        if (version, route) in self._fresh:  # the handle's set-up call: not the version's
            self._fresh.discard((version, route))
        else:
            self._windows[version].add(t0, (time.monotonic() - t0) * 1000)
        if version != primary:  # shadow the primary off the answer's path
            task = asyncio.get_running_loop().create_task(
                self._shadow(primary, version, x, proba, caller)
            )
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)
        info = await self._describe(version)
        body = answer(proba, info["classes"], info)
        body["route"] = route
        return JSONResponse(body)


def build_router_app(model_name: str, config: dict[str, Any], node_resource: str = "") -> Any:
    """The router application of ``model_name``; ``config`` is its ``user_config``
    (``primary``, ``candidate``, ``share``, ``percentile``, ``thresholds``,
    ``candidate_timeout_s`` and ``versions``: ``{version: {"routes": [...],
    "warm_max_in_flight": n}}``). ``node_resource`` pins it beside the tiers."""
    actor: dict[str, Any] = {"num_cpus": 0.05}
    if node_resource:
        actor["resources"] = {node_resource: 0.01}
    return ModelRouter.options(
        user_config=config, ray_actor_options=actor, version=ROUTER_CODE_VERSION, _internal=True
    ).bind(model_name)
