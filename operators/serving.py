"""Serving stages: deploy the promoted version under the contract (placement, tiers, canary
through the router) and take a model off the endpoint (``ml_undeploy``); the profile stage is
``operators.profile``, the verify stage ``operators.verify``. Every Serve and endpoint call
goes through ``ServeHook``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from operators.base import PlannedStageOperator, StageOperator, run_marker
from operators.links import ServeEndpointLink
from policies import (
    CHAMPION,
    INTENT_FAILED,
    INTENT_OFF,
    INTENT_SERVING,
    VALUE_CANARY_ACCURACY,
    CanaryPolicy,
    CanaryStats,
    PlacementInfeasible,
    PlacementPlan,
    PriceTable,
    ProfilePoint,
    RouterThresholds,
    RunContract,
    ServingProfile,
    TierSettings,
    canary_step,
    capacity_check,
    fixed_plan,
    plan_for_contract,
    regression_tolerance,
    serving_layout,
    version_app,
)


def _price_table() -> PriceTable:
    from slaflow import settings

    path = settings.price_table_path()
    if not path:
        return PriceTable.default()
    try:
        return PriceTable.from_json(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise AirflowFailException(f"SLAFLOW_PRICE_TABLE={path}: {exc}") from exc


class DeployModelOperator(PlannedStageOperator):
    """Serve the ``champion`` on Ray Serve as the contract plans it; a no-op when that version
    already serves alone.

    The placement planner chooses variant, CPUs, batching, replica bounds and queue bound from
    the version's serving profile (a version without one gets ``serving_replicas`` fixed
    replicas); ``policies.serving_layout`` sets its tiers. The version starts as its own Serve
    application beside whatever serves; the model's router then gives it a canary share of the
    traffic (10%, 50%, then all), checked at each step against the old version (errors, tail
    latency, disagreeing answers) on test-set probes plus live traffic. Each step is a routing
    change: no replica restarts. A failed check routes everything back to the old version,
    moves ``champion`` back and fails the task. ``canary=False`` (``ml_rollback``) switches
    at once. Capacity is checked first: a version that cannot get its CPUs fails at once,
    naming what served models hold.

    Skips (with the reason) when the model has no champion yet. Idempotent: a retry finds the
    version serving, or reuses its running application and runs the canary again.
    """

    template_fields: Sequence[str] = ("plan", "promotion", "serving_profile", "data_profile")
    operator_extra_links = (ServeEndpointLink(),)

    def __init__(
        self,
        *,
        promotion: Any,
        serving_profile: Any = None,
        data_profile: Any = None,
        canary: bool = True,
        ready_timeout_s: float = 300,
        canary_policy: CanaryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "none_failed")
        super().__init__(**kwargs)
        self.promotion = promotion
        self.serving_profile, self.data_profile = serving_profile, data_profile
        self.canary = canary
        self.ready_timeout_s = ready_timeout_s
        self.canary_policy = canary_policy or CanaryPolicy()

    def execute(self, context: Any) -> dict[str, Any]:
        """Deploy, then record on the model how it ended (``ml_reconcile`` reads it): a
        failure is marked ``failed`` so the reconciler repairs it without waiting."""
        from mlflow_config import registry as reg

        by = run_marker(context)
        client, model = self.mlflow.client, self.contract.model_name
        with reg.model_lease(client, model, by):  # one writer per model (policies._lease)
            try:
                out = self._deploy(context)
            except AirflowSkipException:
                raise
            except Exception:
                champion = reg.get_alias_version(client, model, CHAMPION)
                if champion is not None:
                    reg.set_serving_intent(client, model, INTENT_FAILED, str(champion.version), by)
                raise
            reg.set_serving_intent(client, model, INTENT_SERVING, out["model_version"], by)
        return out

    def _deploy(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg

        contract, client = self.contract, self.mlflow.client
        model = contract.model_name
        champion = reg.get_alias_version(client, model, CHAMPION)
        if champion is None:
            raise AirflowSkipException(
                f"{model} has no champion (this run was not promoted and none was before): "
                f"nothing to serve"
            )
        version = str(champion.version)
        endpoint = self.serve.url(model)
        context["ti"].xcom_push(key="endpoint_url", value=endpoint)
        info = self.serve.info(model)
        served = None if info is None else str(info["model_version"])
        routed = self._routed_versions(model) if info is not None else {}
        if served == version and not (info or {}).get("canary", {}).get("candidate"):
            self.log.info("%s already serves %s v%s: nothing to do", endpoint, model, version)
            return {"endpoint_url": endpoint, "model_version": version, "changed": False}
        plan, profile_doc = self._plan(contract, version)
        for r in plan.reasons:
            self.log.info("placement: %s", r)
        tiers = serving_layout(plan, contract, _price_table())
        for t in tiers:
            self.log.info(
                "tier %s: %g CPU, %s; %s",
                t.route,
                t.num_cpus,
                f"{t.replicas} replica(s)"
                if t.autoscaler is None
                else f"{t.autoscaler.min_replicas}-{t.autoscaler.max_replicas} replicas "
                f"(SLO autoscaler)",
                t.reason,
            )
        self._check_capacity(model, version, tiers)
        spec = {
            "version": version,
            "model_uri": f"models:/{model}/{version}",
            "variant": plan.variant,
            # From the registered version's own run, never from a tag's document: whoever
            # can write tags must not choose what the replicas load.
            "variant_uri": self._variant_uri(model, version, plan.variant),
            # what the replicas must find when they download it (absent on versions
            # registered before digests were recorded: not checked)
            "model_sha256": reg.version_tag(client, model, version, reg.TAG_ARTIFACT_SHA256) or "",
            "variant_sha256": reg.version_tag(client, model, version, reg.TAG_VARIANT_SHA256) or "",
            "tiers": [t.to_dict() for t in tiers],
        }
        self._start_version(model, spec)
        entry = {
            "routes": [t.route for t in tiers],
            "warm_max_in_flight": plan.max_ongoing_requests * max(1, plan.max_replicas),
        }
        base = self._router_base(contract, plan, profile_doc)
        canary_log: list[dict[str, Any]] = []
        old = served if served is not None and served != version and served in routed else None
        if old is None:
            if info is not None and not routed:
                self.log.warning(
                    "%s is served by an older slaflow layout: replacing it at once", endpoint
                )
            self._route(model, {**base, "primary": version, "versions": {version: entry}})
            self.serve.wait_running(model, self.ready_timeout_s)
            self.serve.wait_routing(model, version, None, self.ready_timeout_s)
        else:
            if self.canary:
                canary_log = self._canary(context, model, base, old, routed[old], version, entry)
            self._route(model, {**base, "primary": version, "versions": {version: entry}})
            self.serve.wait_routing(model, version, None, self.ready_timeout_s)
            self._drop_versions(model, keep=version)
        self.log.info("Serving %s v%s at %s (%s)", model, version, endpoint, plan.reasons[0])
        reg.record_serving(
            client,
            model,
            version,
            {
                "endpoint": endpoint,
                "latency_slo_ms": contract.latency_slo_ms,
                "latency_percentile": contract.latency_percentile,
                "deployed_by": run_marker(context),
                "deployed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "plan": plan.to_dict(),
                "tiers": spec["tiers"],
                "canary": canary_log,
                "thresholds": base.get("thresholds"),
            },
        )
        return {
            "endpoint_url": endpoint,
            "model_version": version,
            "changed": True,
            "placement": plan.to_dict(),
            "tiers": spec["tiers"],
            "canary": canary_log,
        }

    # -- decisions' inputs ---------------------------------------------------------------

    def _plan(
        self, contract: RunContract, version: str
    ) -> tuple[PlacementPlan, dict[str, Any] | None]:
        """The placement of ``version``: from its serving profile, else the fixed plan."""
        doc = self._profile_doc(contract.model_name, version)
        if doc is None:
            self.log.warning(
                "%s v%s has no serving profile: %d fixed replica(s)",
                contract.model_name,
                version,
                contract.serving_replicas,
            )
            return fixed_plan(contract), None
        try:
            plan = plan_for_contract(
                contract,
                ServingProfile.from_dict(doc),
                _price_table(),
                self.ray.cluster_resources(),
            )
        except PlacementInfeasible as exc:
            served = self.serve.served_version(contract.model_name)
            still = f"v{served} still serves" if served else "nothing was serving"
            raise AirflowFailException(
                f"serving placement for {contract.model_name} v{version}: {exc} (binding: "
                f"{exc.binding}, off by {exc.gap:.4g}); {still}"
            ) from exc
        return plan, doc

    def _variant_uri(self, model: str, version: str, variant: str) -> str:
        """Where the registered version's ``variant`` lies: under its run, where the evaluate
        task logged it (``ray_jobs.variants``); "" for the full model."""
        from ray_jobs.variants import INT8_ARTIFACT_PATH, INT8_FILE, VARIANT_INT8

        if variant != VARIANT_INT8:
            return ""
        run_id = self.mlflow.client.get_model_version(model, version).run_id
        return f"runs:/{run_id}/{INT8_ARTIFACT_PATH}/{INT8_FILE}"

    def _profile_doc(self, model: str, version: str) -> dict[str, Any] | None:
        if self.serving_profile and str(self.serving_profile.get("version")) == version:
            return {
                **self.serving_profile["profile"],
                "variant_uri": self.serving_profile.get("variant_uri", ""),
            }
        from mlflow_config import registry as reg

        uri = reg.version_tag(self.mlflow.client, model, version, reg.TAG_SERVING_PROFILE)
        return None if not uri else self.mlflow.load_dict(uri)

    def _router_base(
        self, contract: RunContract, plan: PlacementPlan, profile_doc: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Routing settings that do not depend on which versions serve: the thresholds of
        StraightLine's rule from the planned shape's profile, the percentile, the canary's
        timeout."""
        base: dict[str, Any] = {
            "candidate": None,
            "share": 0.0,
            "percentile": contract.latency_percentile,
            "candidate_timeout_s": self.canary_policy.candidate_timeout_s,
        }
        if profile_doc is not None:
            point = next(
                ProfilePoint(**p)
                for p in profile_doc["points"]
                if p["variant"] == plan.variant
                and p["num_cpus"] == plan.num_cpus
                and p["max_batch_size"] == plan.max_batch_size
            )
            base["thresholds"] = RouterThresholds.from_profile(
                point, contract.latency_slo_ms, contract.latency_percentile, plan.idle_timeout_s
            ).to_dict()
        return base

    def _routed_versions(self, model: str) -> dict[str, dict[str, Any]]:
        """The versions the model's router sends traffic to, with their route entries
        (empty for an endpoint of an older layout, which has no version applications)."""
        try:
            config = self.serve.stats(model).get("config") or {}
        except Exception:  # noqa: BLE001 - an older router without stats: no versions
            return {}
        return {str(v): dict(e) for v, e in (config.get("versions") or {}).items()}

    def _check_capacity(self, model: str, version: str, tiers: Sequence[TierSettings]) -> None:
        if version_app(model, version) in self.serve.applications():
            return  # started by a previous try: its CPUs are already held
        need = sum(t.initial_replicas * t.num_cpus for t in tiers)
        need_gpus = sum(t.initial_replicas * t.num_gpus for t in tiers)
        free = self.ray.available_resources()
        check = capacity_check(
            need_cpus=need,
            need_gpus=need_gpus,
            free_cpus=free.get("CPU", 0.0),
            free_gpus=free.get("GPU", 0.0),
            footprint=self.serve.footprint(),
            what=f"serving {model} v{version}",
        )
        self.log.info("capacity: %s", check.message)
        if not check.fits:
            raise AirflowFailException(check.message)

    # -- Serve actions (through the hook) -------------------------------------------------

    def _start_version(self, model: str, spec: dict[str, Any]) -> None:
        app = version_app(model, spec["version"])
        if self.serve.applications().get(app) == "RUNNING":
            self.log.info("%s is already running (a previous try started it)", app)
            return
        self.serve.deploy_version(model, self.mlflow.tracking_uri, spec)
        self.serve.wait_running(app, self.ready_timeout_s)

    def _route(self, model: str, config: dict[str, Any]) -> None:
        """Route ``model`` as ``config`` says; the endpoint's request model is the primary's
        signature (a candidate with other columns is refused by its encoder and answered by
        the primary)."""
        primary = str(config["primary"])
        routes = config["versions"][primary].get("routes") or ["warm"]
        signature = self.serve.version_signature(model, primary, routes[0], self.ready_timeout_s)
        self.serve.route(model, config, self.contract.serving_node_resource, signature)

    def _drop_versions(self, model: str, keep: str) -> None:
        """Delete the model's version applications the router no longer sends traffic to
        (their in-flight requests finish first: Serve stops replicas gracefully)."""
        for v in self.serve.served_versions(model):
            if v != keep:  # no wait: Serve stops the replicas in the background
                self.serve.delete(version_app(model, v), wait=False)
                self.log.info("removed %s v%s's application", model, v)

    def _canary(
        self,
        context: Any,
        model: str,
        base: dict[str, Any],
        old: str,
        old_entry: dict[str, Any],
        new: str,
        new_entry: dict[str, Any],
    ) -> list[dict[str, Any]]:
        from mlflow_config import registry as reg

        policy = self.canary_policy
        client = self.mlflow.client
        name = self.contract.target_metric
        old_acc = reg.version_test_accuracy(client, model, old, name)
        new_acc = reg.version_test_accuracy(client, model, new, name)
        if self.contract.quality_metric.task == "regression":
            # Values disagree when apart by more than both models' errors allow.
            rmse_old = 1 - reg.version_test_accuracy(client, model, old, "rmse")
            rmse_new = 1 - reg.version_test_accuracy(client, model, new, "rmse")
            base = {**base, "tolerance": regression_tolerance(rmse_old, rmse_new)}
            old_acc = new_acc = VALUE_CANARY_ACCURACY
        versions = {old: old_entry, new: new_entry}
        log: list[dict[str, Any]] = []
        for share in policy.steps():
            t0 = time.monotonic()
            self._route(
                model,
                {**base, "primary": old, "candidate": new, "share": share, "versions": versions},
            )
            self.serve.wait_routing(model, old, new, self.ready_timeout_s)
            switched = time.monotonic() - t0
            rounds, verdict = 0, None
            while verdict is None or verdict.action == "wait":
                self._probe(model)
                rounds += 1
                stats = self.serve.stats(model)["versions"]
                s_new, s_old = stats.get(new, {}), stats.get(old, {})
                verdict = canary_step(
                    CanaryStats(
                        int(s_new.get("requests", 0)),
                        int(s_new.get("errors", 0)),
                        float(s_new.get("tail_ms", 0.0)),
                        int(s_new.get("disagreements", 0)),
                    ),
                    CanaryStats(
                        int(s_old.get("requests", 0)),
                        int(s_old.get("errors", 0)),
                        float(s_old.get("tail_ms", 0.0)),
                    ),
                    policy=policy,
                    slo_ms=self.contract.latency_slo_ms,
                    old_accuracy=old_acc,
                    new_accuracy=new_acc,
                    rounds_done=rounds,
                )
            log.append(
                {
                    "share": share,
                    "action": verdict.action,
                    "reason": verdict.reason,
                    "routing_change_s": round(switched, 3),
                    "step_s": round(time.monotonic() - t0, 3),
                }
            )
            self.log.info(
                "canary v%s at %.0f%%: %s (%s); routing change took %.2fs",
                new,
                share * 100,
                verdict.action,
                verdict.reason,
                switched,
            )
            if verdict.action != "advance":
                self._route(model, {**base, "primary": old, "versions": {old: old_entry}})
                self.serve.wait_routing(model, old, None, self.ready_timeout_s)
                self._drop_versions(model, keep=old)
                marker = run_marker(context)
                try:
                    # to the version that was serving, which need not be previous_champion
                    reg.rollback(client, model, marker, to=old)
                except reg.RollbackError as exc:
                    self.log.warning("registry rollback: %s", exc)
                raise AirflowFailException(
                    f"canary of {model} v{new} rolled back at {share:.0%} of traffic: "
                    f"{verdict.reason}; v{old} serves all traffic again and is champion"
                )
        return log

    def _probe(self, model: str) -> None:
        """Test-set rows as canary traffic (both versions see them; live traffic adds up)."""
        from concurrent.futures import ThreadPoolExecutor

        import requests

        if not self.data_profile or not self.canary_policy.probe_requests:
            time.sleep(5)  # live traffic only: give it time to arrive
            return
        if getattr(self, "_probe_rows", None) is None:  # read the test set once per task
            from ray_jobs import data_io

            rows, _ = data_io.read_request_rows(
                self.data_profile["paths"]["test"], self.data_profile, limit=1000
            )
            self._probe_rows = rows
        x = self._probe_rows

        def one(i: int) -> None:
            try:
                self.serve.predict(model, [x[i % len(x)]], caller="slaflow-canary")
            except requests.RequestException:
                pass

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(self.canary_policy.probe_requests)))


class UndeployModelOperator(StageOperator):
    """Take a model off the endpoint (``ml_undeploy``): its router and every version
    application are deleted, so its CPUs return to the cluster; the registry is untouched
    (``champion`` still names the version, and a deploy serves it again). Idempotent: a
    model that is not served is reported as such."""

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow.exceptions import MlflowException

        from mlflow_config import registry as reg

        model = str(context["params"]["model_name"])
        before = self.serve.footprint().of_model(model)
        served = self.serve.served_version(model) or ""
        by = run_marker(context)
        with reg.model_lease(self.mlflow.client, model, by):
            try:  # first: ml_reconcile must not serve it again while it is being taken off
                reg.set_serving_intent(self.mlflow.client, model, INTENT_OFF, served, by)
            except MlflowException as exc:  # not a registered model: nothing would re-serve it
                self.log.info("%s is not in the registry (%s): no intent recorded", model, exc)
            deleted = self.serve.undeploy(model)
        if not deleted:
            self.log.info("%s is not served: nothing to take off", model)
        else:
            self.log.info(
                "%s taken off the endpoint: deleted %s, freeing %.4g CPU",
                model,
                deleted,
                before.cpus,
            )
        return {"model_name": model, "deleted": deleted, "freed_cpus": before.cpus}
