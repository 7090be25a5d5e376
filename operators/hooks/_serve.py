"""Ray Serve and the model endpoints: the one place that deploys, routes, deletes, waits on,
probes and measures Serve applications.

A served model is a router application named after the model (its HTTP route, ``/<model>``)
plus one application per version (``<model>+v<version>``, no route) holding that version's
tiers. Operators, the CLI, the benchmarks and the tests all go through this hook.
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from operators.hooks._common import EndpointError
from operators.hooks._ray import RayHook
from policies import (
    INTERNAL_PREFIX,
    ServedDeployment,
    ServeOverhead,
    ServingFootprint,
    model_of_app,
    parse_version_app,
    version_app,
)

#: Name of the short-lived application that measures the Serve path (not a model's name:
#: model names cannot contain the separator).
OVERHEAD_APP = INTERNAL_PREFIX + "overhead"


def _status(value: Any) -> str:
    """A Serve status enum as its plain name (``RUNNING``)."""
    return str(getattr(value, "value", value))


class ServeHook(BaseHook):
    """Ray Serve on the cluster of the ``slaflow_ray`` connection (see ``RayHook``)."""

    conn_name_attr = "ray_conn_id"
    default_conn_name = "slaflow_ray"
    hook_name = "slaflow Ray Serve"

    def __init__(
        self, ray_conn_id: str | None = default_conn_name, ray_hook: RayHook | None = None
    ) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id
        self.ray = ray_hook or RayHook(ray_conn_id)

    @property
    def endpoints(self) -> dict[str, str]:
        return self.ray.endpoints

    def url(self, model: str) -> str:
        return f"{self.endpoints['serve_url'].rstrip('/')}/{model}"

    @cached_property
    def http(self) -> Any:
        import requests

        return requests.Session()

    # ------------------------------------------------------------------ applications

    def connect(self) -> Any:
        """A driver on the cluster with Serve started (HTTP proxy on the configured host and
        port); returns the ``ray.serve`` module."""
        import ray

        fresh = not ray.is_initialized()  # a new driver connection: start (or find) Serve
        self.ray.connect()
        from ray import serve

        if fresh or not getattr(self, "_serve_started", False):  # an RPC: once per driver
            serve.start(
                http_options={
                    "host": self.endpoints["serve_host"],
                    "port": int(self.endpoints["serve_port"]),
                }
            )
            self._serve_started = True
        return serve

    def deploy_version(self, model: str, tracking_uri: str, spec: dict[str, Any]) -> str:
        """Start (or replace) one version's application; returns its name. Does not wait."""
        from ray_jobs.serve_app import build_version_app

        serve = self.connect()
        app = version_app(model, str(spec["version"]))
        serve.run(
            build_version_app(model, tracking_uri, spec),
            name=app,
            route_prefix=None,
            blocking=False,
        )
        return app

    def route(
        self,
        model: str,
        config: dict[str, Any],
        node_resource: str = "",
        signature: dict[str, Any] | None = None,
    ) -> None:
        """Deploy the model's router, or change its routing in place (no restart: see
        ``ray_jobs.serve_router.ROUTER_CODE_VERSION``). Does not wait. ``signature``
        (``version_signature`` of the primary) makes the endpoint's request and response
        models; without one the endpoint takes any rows of numbers or named values."""
        from ray_jobs.serve_router import build_router_app

        serve = self.connect()
        serve.run(
            build_router_app(model, config, node_resource, signature),
            name=model,
            route_prefix=f"/{model}",
            blocking=False,
        )

    def version_signature(
        self, model: str, version: str, route: str, timeout_s: float = 120.0
    ) -> dict[str, Any]:
        """The signature a running version serves (its columns, task and classes), asked of
        its ``route`` tier's replica: what the endpoint's request model is made from."""
        from ray_jobs.serve_api import signature_of

        serve = self.connect()
        handle = serve.get_deployment_handle(route, app_name=version_app(model, version))
        return signature_of(handle.info.remote().result(timeout_s=timeout_s))

    def delete(self, app: str, wait: bool = True) -> None:
        """Delete an application; ``wait`` until its replicas are gone (their CPUs free)."""
        serve = self.connect()
        serve.delete(app, _blocking=wait)

    def applications(self) -> dict[str, str]:
        """Every Serve application and its status (``RUNNING``, ``DEPLOYING``, ...)."""
        serve = self.connect()
        return {name: _status(app.status) for name, app in serve.status().applications.items()}

    def model_applications(self, model: str) -> list[str]:
        """The router and version applications of ``model`` that exist now (not those being
        deleted)."""
        return sorted(
            a
            for a, status in self.applications().items()
            if model_of_app(a) == model and status != "DELETING"
        )

    def served_versions(self, model: str) -> list[str]:
        """Versions of ``model`` with an application now (not those being deleted)."""
        return sorted(
            parsed[1] for a in self.model_applications(model) if (parsed := parse_version_app(a))
        )

    def undeploy(self, model: str) -> list[str]:
        """Take ``model`` off the endpoint: its router first (requests get 404 at once), then
        every version application. Returns what was deleted; the registry is not touched."""
        apps = self.model_applications(model)
        for app in sorted(apps, key=lambda a: a != model):  # the router first
            self.delete(app)
        return apps

    def wait_running(self, app: str, timeout_s: float = 300.0, poll_s: float = 0.5) -> None:
        """Until Serve reports ``app`` RUNNING (every replica it wants is up and healthy)."""
        serve = self.connect()
        deadline = time.monotonic() + timeout_s
        while True:
            status = serve.status().applications.get(app)
            state = None if status is None else _status(status.status)
            if state == "RUNNING":
                return
            if state == "DEPLOY_FAILED":
                raise RuntimeError(f"Serve application {app} failed to deploy: {status.message}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Serve application {app} is not RUNNING after {timeout_s:.0f}s (status "
                    f"{state or 'missing'}); see the Ray dashboard's Serve tab"
                )
            time.sleep(poll_s)

    def wait_routing(
        self, model: str, primary: str, candidate: str | None, timeout_s: float = 120.0
    ) -> None:
        """Until the endpoint's router answers with this primary and canary candidate."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.info(model) or {}
            if (
                str(info.get("model_version")) == primary
                and (info.get("canary") or {}).get("candidate") == candidate
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.url(model)} did not route to v{primary} (canary "
                    f"{candidate}) within {timeout_s:.0f}s; see the Ray "
                    f"dashboard's Serve tab"
                )
            time.sleep(0.25)

    def running_replicas(self, app: str, deployment: str) -> int:
        """Replicas of one deployment Serve reports RUNNING now."""
        serve = self.connect()
        status = serve.status().applications.get(app)
        dep = None if status is None else status.deployments.get(deployment)
        return 0 if dep is None else int(dep.replica_states.get("RUNNING", 0))

    def replica_ids(self, app: str) -> dict[str, set[str]]:
        """Live replica ids per deployment of ``app`` (a restart changes them)."""
        out: dict[str, set[str]] = {}
        details = self.details().get("applications", {}).get(app) or {}
        for name, dep in (details.get("deployments") or {}).items():
            out[name] = {
                r["replica_id"] for r in dep.get("replicas", []) if r.get("state") != "STOPPED"
            }
        return out

    # ------------------------------------------------------------------ the endpoint

    def info(self, model: str) -> dict[str, Any] | None:
        """``GET /<model>``: the primary version's description, or None if nothing answers."""
        import requests

        try:
            resp = self.http.get(self.url(model), timeout=5)
            body = resp.json() if resp.ok else None
        except (requests.RequestException, ValueError):
            return None
        return body if isinstance(body, dict) and "model_version" in body else None

    def served_version(self, model: str) -> str | None:
        info = self.info(model)
        return None if info is None else str(info["model_version"])

    def stats(self, model: str) -> dict[str, Any]:
        """``GET /<model>/-/stats``: per-version counts and tail latency since the last
        routing change."""
        resp = self.http.get(f"{self.url(model)}/-/stats", timeout=10)
        resp.raise_for_status()
        out: dict[str, Any] = resp.json()
        return out

    def predict(
        self, model: str, rows: list[Any], *, caller: str | None = None, timeout_s: float = 30.0
    ) -> Any:
        """``POST /<model>`` with ``{"instances": rows}``; the ``requests`` response."""
        headers = {"x-slaflow-caller": caller} if caller else {}
        return self.http.post(
            self.url(model), json={"instances": rows}, headers=headers, timeout=timeout_s
        )

    def wait_answering(self, model: str, timeout_s: float = 300.0) -> float:
        """Seconds until ``GET /<model>`` answers."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.info(model) is not None:
                return time.monotonic() - t0
            time.sleep(0.1)
        raise TimeoutError(f"{self.url(model)} did not answer within {timeout_s:.0f}s")

    def measure(
        self,
        model: str,
        rows: list[list[float]],
        *,
        sequential: int = 200,
        concurrency: int = 8,
        load_s: float = 3.0,
        big_rows: int = 64,
        warmup: int = 20,
    ) -> dict[str, float]:
        """Latency of one-row requests at low load (p50/p99), saturated requests/s with
        ``concurrency`` clients, and the extra milliseconds per row of a large request;
        measured from a process of its own (``ray_jobs.serve_measure``), so the caller's
        threads (an Airflow task's, a test's) do not slow the client down."""
        import json
        import subprocess
        import sys
        import tempfile

        spec = {
            "url": self.url(model),
            "rows": rows,
            "sequential": sequential,
            "concurrency": concurrency,
            "load_s": load_s,
            "big_rows": big_rows,
            "warmup": warmup,
        }
        with tempfile.NamedTemporaryFile("w", suffix=".json") as fh:
            json.dump(spec, fh)
            fh.flush()
            out = subprocess.run(
                [sys.executable, "-m", "ray_jobs.serve_measure", fh.name],
                capture_output=True,
                text=True,
                timeout=600,
            )
        if out.returncode != 0:
            raise RuntimeError(f"measuring {self.url(model)} failed: {out.stderr[-2000:]}")
        result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    def deploy_noop(
        self, name: str, *, num_cpus: float, resource: str = "", wait: bool = True
    ) -> None:
        """Serve a model that does no work as ``name`` (router + one no-op replica): the
        Serve path on its own, for overhead measurements. Replaces what ``name`` served."""
        from ray_jobs.serve_app import overhead_app
        from ray_jobs.serve_router import build_router_app

        serve = self.connect()
        for app in (name, version_app(name, "0")):
            serve.delete(app, _blocking=True)
        serve.run(
            overhead_app(num_cpus, resource),
            name=version_app(name, "0"),
            route_prefix=None,
            blocking=False,
        )
        serve.run(
            build_router_app(
                name,
                {
                    "primary": "0",
                    "versions": {"0": {"routes": ["warm"], "warm_max_in_flight": 10_000}},
                },
                resource,
            ),
            name=name,
            route_prefix=f"/{name}",
            blocking=False,
        )
        if wait:
            self.wait_running(version_app(name, "0"))
            self.wait_routing(name, "0", None)

    def measure_overhead(
        self, *, num_cpus: float, resource: str = "", load_s: float = 2.0
    ) -> ServeOverhead:
        """The Serve path on its own: a router in front of a replica that does no work, as
        every model is served. Deploy-to-first-answer is a replica's cold start without a
        model. Deleted afterwards."""
        name = OVERHEAD_APP
        t0 = time.monotonic()
        self.deploy_noop(name, num_cpus=num_cpus, resource=resource, wait=False)
        try:
            self.wait_answering(name, timeout_s=300)
            cold = time.monotonic() - t0
            m = self.measure(name, [[0.0]], load_s=load_s, big_rows=2)
        finally:
            serve = self.connect()
            for app in (name, version_app(name, "0")):
                serve.delete(app, _blocking=False)
        return ServeOverhead(
            p50_ms=m["p50_ms"],
            p99_ms=m["p99_ms"],
            capacity_rps=m["capacity_rps"],
            cold_start_s=round(cold, 3),
        )

    # ------------------------------------------------------------------ capacity

    def details(self) -> dict[str, Any]:
        """Serve's own view of every application (the dashboard's REST API)."""
        import requests

        from slaflow.settings import ray_auth_token

        url = f"{self.endpoints['dashboard_url'].rstrip('/')}/api/serve/applications/"
        token = ray_auth_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            resp = self.http.get(url, headers=headers, timeout=15)
            resp.raise_for_status()
        except requests.RequestException as exc:
            raise EndpointError(
                f"cannot read Serve's applications from {url} ({type(exc).__name__}: {exc}). "
                f"Check the Ray dashboard (SLAFLOW_RAY_DASHBOARD_URL, or the "
                f"'{self.ray_conn_id}' connection) and its token"
            ) from exc
        out: dict[str, Any] = resp.json()
        return out

    def footprint(self) -> ServingFootprint:
        """What every served model's replicas hold now (CPUs and GPUs, per deployment)."""
        deployments = []
        for app, details in (self.details().get("applications") or {}).items():
            for name, dep in (details.get("deployments") or {}).items():
                res = dep.get("required_resources") or {}
                live = [r for r in dep.get("replicas", []) if r.get("state") != "STOPPED"]
                deployments.append(
                    ServedDeployment(
                        app=app,
                        deployment=name,
                        replicas=len(live),
                        num_cpus=float(res.get("CPU", 0.0)),
                        num_gpus=float(res.get("GPU", 0.0)),
                    )
                )
        return ServingFootprint.of(deployments)
