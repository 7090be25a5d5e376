"""The ingress of one model: ``ModelRouter``, the only HTTP route, ``/<model>``.

The route is a FastAPI app (``ray_jobs.serve_api``) built on the replica from the served
model's signature through Serve's FastAPI integration; its OpenAPI document is at
``/<model>/docs``. ``POST /<model>`` is validated once there (4xx with the reason), then sent:
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
check and the benchmarks read). Each client address has at most ``client_max_in_flight``
requests in flight (429 beyond), whatever routing hint it sends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve.exceptions import BackPressureError

from policies import (
    ROUTE_WARM,
    CallerRates,
    InFlightBound,
    RouterThresholds,
    route_request,
    version_app,
)
from ray_jobs.serve_app import LatencyWindow, answer

#: Seconds a request may wait on the primary before the router answers 504.
REQUEST_TIMEOUT_S = 30.0
#: Requests one client address may have in flight (``client_max_in_flight`` in the config).
CLIENT_MAX_IN_FLIGHT = 64


#: The router's code version, pinned to this file's content. ``serve.run`` otherwise gives
#: every deployment a fresh random version on each call, and a new code version restarts the
#: replicas even when only ``user_config`` changed. With the version pinned, a redeploy that
#: changes only the routing (a canary step, a switch, a rollback) is a lightweight update:
#: Serve calls ``reconfigure`` on the running router. Serve 2.60 accepts a version only through
#: the internal flag of ``Deployment.options``; the integration tests check that a canary step
#: keeps every replica (router and model) alive.
ROUTER_CODE_VERSION = (
    "router-"
    + hashlib.sha256(
        Path(__file__).read_bytes() + (Path(__file__).parent / "serve_api.py").read_bytes()
    ).hexdigest()[:12]
)


@serve.deployment(
    max_ongoing_requests=256,
    max_queued_requests=1024,
    ray_actor_options={"num_cpus": 0.05},
    health_check_period_s=5,
    max_surge_percent=100,
)
@serve.ingress()
class ModelRouter:
    def __init__(self, model_name: str, signature: dict[str, Any] | None = None) -> None:
        self._model = model_name
        self._signature = signature
        self._bound = InFlightBound(CLIENT_MAX_IN_FLIGHT)
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
        self._bound.limit = int(config.get("client_max_in_flight", CLIENT_MAX_IN_FLIGHT))

    def __serve_build_asgi_app__(self) -> Any:
        """The endpoint's FastAPI app, built here on the replica from the model's signature."""
        from ray_jobs.serve_api import build_api

        return build_api(self, self._model, self._signature)

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

    async def describe(self) -> dict[str, Any]:
        primary = str(self._cfg["primary"])
        info = dict(await self._describe(primary))
        info.update(
            routes=sorted(self._routes(primary)),
            canary={"candidate": self._cfg.get("candidate"), "share": self._cfg.get("share", 0.0)},
            thresholds=self._thresholds.to_dict(),
        )
        return info

    async def encoder(self) -> Any:
        return self._encoder(await self._describe(str(self._cfg["primary"])))

    async def predict(
        self, x: np.ndarray, caller: str, client: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Rows already validated by the app, answered as (status, body, headers)."""
        if not self._bound.enter(client):
            self._counts[str(self._cfg["primary"])]["refused_client_bound"] += 1
            return (
                429,
                {
                    "error": f"this client ({client}) already has {self._bound.limit} requests "
                    f"in flight; wait for their answers or retry later"
                },
                {"Retry-After": "1"},
            )
        try:
            return await self._answer(x, caller)
        finally:
            self._bound.leave(client)

    async def _answer(
        self, x: np.ndarray, caller: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        primary = str(self._cfg["primary"])
        t0 = time.monotonic()
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
            return (
                503,
                {
                    "error": f"overloaded: the {route} tier's queue is full "
                    f"(bounded to answer within the SLO); retry later"
                },
                {"Retry-After": "1"},
            )
        except Exception as exc:
            if version == primary and isinstance(exc, TimeoutError):
                self._counts[primary]["errors"] += 1
                return (
                    504,
                    {
                        "error": f"the model did not answer within "
                        f"{self._cfg.get('request_timeout_s', REQUEST_TIMEOUT_S):g} s; "
                        f"retry later"
                    },
                    {},
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
        bad = np.flatnonzero(~np.isfinite(proba).all(axis=1))
        if bad.size:  # inputs far outside what the model was trained on overflow it
            self._counts[version]["non_finite_answers"] += 1
            rows = ", ".join(f"instances[{i}]" for i in bad[:5])
            return (
                422,
                {
                    "error": f"the model's answer for {rows}{' ...' if bad.size > 5 else ''} "
                    f"is not a finite number: their values are far outside the range it was "
                    f"trained on; send values of the training data's scale"
                },
                {},
            )
        info = await self._describe(version)
        body = answer(proba, info["classes"], info)
        body["route"] = route
        return 200, body, {}


def build_router_app(
    model_name: str,
    config: dict[str, Any],
    node_resource: str = "",
    signature: dict[str, Any] | None = None,
) -> Any:
    """The router application of ``model_name``; ``config`` is its ``user_config``
    (``primary``, ``candidate``, ``share``, ``percentile``, ``thresholds``,
    ``candidate_timeout_s``, ``request_timeout_s``, ``client_max_in_flight`` and ``versions``:
    ``{version: {"routes": [...], "warm_max_in_flight": n}}``). ``node_resource`` pins it
    beside the tiers. ``signature`` (``ray_jobs.serve_api.signature_of`` of the primary) makes
    the request and response models; a new signature is a new code version (the replicas
    restart, with a surge), the same one keeps them."""
    actor: dict[str, Any] = {"num_cpus": 0.05}
    if node_resource:
        actor["resources"] = {node_resource: 0.01}
    shape = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:8]
    return ModelRouter.options(
        user_config=config,
        ray_actor_options=actor,
        version=f"{ROUTER_CODE_VERSION}-{shape}",
        _internal=True,
    ).bind(model_name, signature)
