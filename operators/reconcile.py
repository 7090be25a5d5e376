"""``ml_reconcile``'s check: which models to serve again so that serving equals the registry.

A thin adapter around ``policies.reconcile_action``: it reads, per registered model, the
``champion`` alias, what the endpoint serves (and any canary), and the serving intent the
stages recorded, and returns one deploy request per model to repair. The deploy itself is
``DeployModelOperator`` (mapped, no canary), the same code every other deploy runs.
"""

from __future__ import annotations

import json
import time
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from operators.base import StageOperator, run_key, run_marker
from policies import (
    CHAMPION,
    INTENT_DEPLOYING,
    RunContract,
    RunPlan,
    reconcile_action,
)


class ReconcileServingOperator(StageOperator):
    """Decide, per model (or the one named by the ``model_name`` param), whether to serve its
    champion again; record the reason on the champion (``slaflow.reconciled``) and mark the
    model ``deploying`` before handing it to the deploy task, so an overlapping reconcile run
    or a retry never deploys twice. Returns ``[{"plan", "promotion"}]`` for the deploy task.

    Models taken off on purpose (``ml_undeploy``), models with no champion, and deploys still
    in progress are left alone: see ``policies.reconcile_action``.
    """

    ui_color = "#e2f0d9"

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from mlflow.exceptions import MlflowException

        from mlflow_config import registry as reg

        client = self.mlflow.client
        name = str((context["params"] or {}).get("model_name") or "")
        if name:
            try:
                client.get_registered_model(name)
            except MlflowException as exc:
                raise AirflowFailException(
                    f"param 'model_name': no registered model named {name!r} ({exc}). Fix: "
                    f"name a model of the registry, or leave it empty to reconcile every model"
                ) from exc
        models = [name] if name else _registered_models(client)
        by = run_marker(context)
        repairs: list[dict[str, Any]] = []
        for model in models:
            try:
                with reg.model_lease(client, model, by, wait_s=60):
                    repair = self._check(client, model, by, f"{run_key(context)}/{model}")
            except reg.LeaseBusy as exc:  # someone is changing it: next time
                self.log.info("%s: %s", model, exc)
                continue
            if repair is not None:
                repairs.append(repair)
        self.log.info(
            "%d model(s) checked, %d to serve again: %s",
            len(models),
            len(repairs),
            [r["plan"]["contract"]["model_name"] for r in repairs],
        )
        return repairs

    def _check(self, client: Any, model: str, by: str, key: str) -> dict[str, Any] | None:
        """The deploy request for ``model``, or None when it needs none."""
        from mlflow_config import registry as reg

        champion = reg.get_alias_version(client, model, CHAMPION)
        info = self.serve.info(model)
        action = reconcile_action(
            champion=None if champion is None else str(champion.version),
            served=None if info is None else str(info["model_version"]),
            canary_candidate=((info or {}).get("canary") or {}).get("candidate"),
            intent=reg.serving_intent(client, model),
            now=time.time(),
        )
        self.log.info("%s: %s", model, action.reason)
        if not action.serve or action.version is None:
            return None
        raw = json.loads(reg.version_tag(client, model, action.version, reg.TAG_CONTRACT) or "{}")
        raw["model_name"] = model
        try:
            contract = RunContract.from_dict(raw)  # from the registry: validated, not trusted
        except ValueError as exc:
            self.log.error(
                "%s v%s: its recorded contract is not valid (%s): not served; serve it "
                "with ml_rollback or a new run",
                model,
                action.version,
                exc,
            )
            return None
        record = {**action.to_dict(), "by": by, "at": time.time()}
        client.set_model_version_tag(model, action.version, reg.TAG_RECONCILED, json.dumps(record))
        reg.set_serving_intent(client, model, INTENT_DEPLOYING, action.version, by)
        plan = RunPlan.make(
            contract,
            run_key=key,
            champion=None,
            num_workers=1,
            worker_reason="reconcile: no training",
        )
        return {"plan": plan.to_dict(), "promotion": {"model_version": action.version}}


def _registered_models(client: Any) -> list[str]:
    """Every registered model's name, page by page (not the models' leases)."""
    from mlflow_config.registry import is_lock

    names: list[str] = []
    token = None
    while True:
        page = client.search_registered_models(max_results=500, page_token=token)
        names.extend(m.name for m in page if not is_lock(m.name))
        token = page.token
        if not token:
            return names
