"""The routed Serve application: one ingress (``ModelRouter``) in front of tiers and versions.

``POST /<model>`` is validated once at the ingress (4xx with the reason), then sent:
- to a version: the primary, or the canary candidate for ``share`` of the requests (its
  answers are compared with the primary's on the same rows, for the canary verdict);
- to a tier of that version by ``policies.route_request`` (StraightLine): ``warm`` (always-on,
  small batches), ``batch`` (large inputs, big batches) or ``elastic`` (scale-to-zero), with
  thresholds computed from the profile and passed in the router's ``user_config``.
A request whose replica dies mid-flight is retried once (predictions are idempotent); a
failing canary answer, or one slower than ``candidate_timeout_s`` (default 10 s), falls back
to the primary, so the client sees no failure.

``GET /<model>`` describes the primary; ``GET /<model>/-/stats`` gives per-version and
per-route counts, errors and tail latency (what the canary check and the benchmark read).
Routing and canary settings live in the router's ``user_config``. Deployed with ``serve.run``
(the imperative API), every redeploy gets a new code version from Serve, so a canary step
restarts the replicas; ``max_surge_percent=100`` keeps the old ones answering until their
replacements are ready, and the deploy task removes a version only after the router has
stopped sending it traffic (``DeployModelOperator._switch``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from typing import Any

import numpy as np
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request
from starlette.responses import JSONResponse

from policies import ROUTE_WARM, CallerRates, RouterThresholds, route_request
from ray_jobs.serve_app import BadRequest, ModelServer, _Window, answer, parse_body

CALLER_HEADER = "x-slaflow-caller"


@serve.deployment(max_ongoing_requests=256, max_queued_requests=1024,
                  ray_actor_options={"num_cpus": 0.05}, health_check_period_s=5,
                  max_surge_percent=100)  # see ModelServer: the old router drains first
class ModelRouter:
    def __init__(self, model_name: str, versions: dict[str, dict[str, Any]]) -> None:
        self._model = model_name
        self._versions = versions            # version -> tier -> DeploymentHandle
        self._cfg: dict[str, Any] = {}
        self._thresholds = RouterThresholds(large_rows=1024, frequent_rps=1.0)
        self._rates = CallerRates()
        self._in_flight: dict[tuple[str, str], int] = defaultdict(int)
        self._info: dict[str, dict[str, Any]] = {}
        self._windows: dict[str, _Window] = defaultdict(lambda: _Window(span_s=600.0))
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._rng = random.Random(0)
        self._shadows: set[asyncio.Task[None]] = set()

    def reconfigure(self, config: dict[str, Any]) -> None:
        primary = str(config["primary"])
        candidate = config.get("candidate")
        for v in (primary, candidate):
            if v is not None and str(v) not in self._versions:
                raise ValueError(f"router config names version {v}, which this application "
                                 f"does not deploy ({sorted(self._versions)})")
        if config.get("candidate") != self._cfg.get("candidate") or \
                config.get("primary") != self._cfg.get("primary"):
            self._windows.clear()
            self._counts.clear()
        self._cfg = dict(config)
        t = config.get("thresholds") or {}
        if t:
            self._thresholds = RouterThresholds(int(t["large_rows"]), float(t["frequent_rps"]))

    async def _describe(self, version: str) -> dict[str, Any]:
        if version not in self._info:
            tiers = self._versions[version]
            handle = tiers.get(ROUTE_WARM) or next(iter(tiers.values()))
            self._info[version] = await handle.info.remote()
        return self._info[version]

    def _choose_version(self) -> str:
        cand = self._cfg.get("candidate")
        if cand is not None and self._rng.random() < float(self._cfg.get("share", 0.0)):
            return str(cand)
        return str(self._cfg["primary"])

    def _choose_route(self, version: str, rows: int, caller: str) -> str:
        tiers = self._versions[version]
        warm_cap = int(self._cfg.get("warm_max_in_flight", 64))
        busy = self._in_flight[(version, ROUTE_WARM)] >= warm_cap
        route = route_request(rows, self._rates.observe(caller, time.monotonic()), busy,
                              self._thresholds)
        return route if route in tiers else ROUTE_WARM if ROUTE_WARM in tiers else \
            next(iter(tiers))

    async def _call(self, version: str, route: str, x: np.ndarray) -> np.ndarray:
        handle = self._versions[version][route]
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

    async def _shadow(self, primary: str, version: str, x: np.ndarray, proba: np.ndarray,
                      caller: str) -> None:
        """The primary's answer on the canary's rows: does the candidate answer alike?"""
        try:
            ref = await self._call(primary, self._choose_route(primary, len(x), caller), x)
        except Exception:
            return
        if (ref.argmax(axis=1) != proba.argmax(axis=1)).mean() > 0.5:
            self._counts[version]["disagreements"] += 1

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        q = float(self._cfg.get("percentile", 99))
        return {"config": self._cfg,
                "versions": {v: {**dict(self._counts[v]), **self._windows[v].stats(now, q)}
                             for v in self._versions}}

    async def __call__(self, request: Request) -> JSONResponse:
        primary = str(self._cfg["primary"])
        if request.method == "GET":
            if request.url.path.rstrip("/").endswith("/-/stats"):
                return JSONResponse(self.stats())
            info = dict(await self._describe(primary))
            info.update(routes=sorted(self._versions[primary]),
                        canary={"candidate": self._cfg.get("candidate"),
                                "share": self._cfg.get("share", 0.0)},
                        thresholds=self._thresholds.to_dict())
            return JSONResponse(info)
        if request.method != "POST":
            return JSONResponse({"error": "use POST with a JSON body, or GET for model info"},
                                status_code=405)
        t0 = time.monotonic()
        meta = await self._describe(primary)
        try:
            x = parse_body(await request.body(), tuple(meta["features"]))
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        caller = request.headers.get(CALLER_HEADER) or \
            (request.client.host if request.client else "anonymous")
        version = self._choose_version()
        route = self._choose_route(version, len(x), caller)
        self._counts[version][f"route_{route}"] += 1
        self._counts[version]["requests"] += 1
        try:
            if version == primary:
                proba = await self._call(version, route, x)
            else:  # a canary that hangs (or went away mid-switch) must not hold the caller
                proba = await asyncio.wait_for(
                    self._call(version, route, x),
                    timeout=float(self._cfg.get("candidate_timeout_s", 10.0)))
        except BackPressureError:
            if version != primary:
                self._counts[version]["errors"] += 1
            self._counts[version]["shed"] += 1
            return JSONResponse({"error": f"overloaded: the {route} tier's queue is full "
                                          f"(bounded to answer within the SLO); retry later"},
                                status_code=503, headers={"Retry-After": "1"})
        except Exception:
            if version == primary:
                raise
            self._counts[version]["errors"] += 1  # canary failed: the primary answers
            version, route = primary, self._choose_route(primary, len(x), caller)
            proba = await self._call(version, route, x)
        self._windows[version].add(t0, (time.monotonic() - t0) * 1000)
        if version != primary:  # shadow the primary off the answer's path
            task = asyncio.get_running_loop().create_task(
                self._shadow(primary, version, x, proba, caller))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)
        info = await self._describe(version)
        body = answer(proba, info["classes"], info)
        body["route"] = route
        return JSONResponse(body)


def build_routed_app(model_name: str, tracking_uri: str, versions: list[dict[str, Any]],
                     router_config: dict[str, Any], node_resource: str = "") -> Any:
    """``versions``: ``[{"version", "model_uri", "variant", "variant_uri",
    "tiers": {route: serve options}}]``; options are ``ModelServer.options`` keyword
    arguments (``ray_actor_options``, ``autoscaling_config`` or ``num_replicas``,
    ``max_ongoing_requests``, ``max_queued_requests``, ``user_config``). ``node_resource``
    (the contract's ``serving_node_resource``) pins the router beside the tiers, which carry
    it in their own ``ray_actor_options``."""
    bound: dict[str, dict[str, Any]] = {}
    for spec in versions:
        v = str(spec["version"])
        bound[v] = {}
        for route, opts in spec["tiers"].items():
            bound[v][route] = ModelServer.options(name=f"{model_name}_v{v}_{route}",
                                                  **opts).bind(
                spec["model_uri"], tracking_uri, model_name, v, spec.get("variant", "full"),
                spec.get("variant_uri", ""), route)
    router_actor: dict[str, Any] = {"num_cpus": 0.05}
    if node_resource:
        router_actor["resources"] = {node_resource: 0.01}
    return ModelRouter.options(user_config=router_config,
                               ray_actor_options=router_actor).bind(model_name, bound)
