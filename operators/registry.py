"""Registry stages: register the version, the promotion gate, promote (aliases), and the
rollback of ``ml_rollback``. Every tag, description and alias write goes through
``mlflow_config.registry``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from airflow.sdk.exceptions import AirflowFailException

from operators.base import PlannedStageOperator, StageOperator, run_key, run_marker
from operators.links import ModelVersionLink
from policies import (
    CHAMPION,
    GATE_PENDING_LINE,
    INTENT_DEPLOYING,
    PromotionDecision,
    ReviewOutcome,
    RunContract,
    RunPlan,
    decide_promotion,
    final_decision,
    gate_report_markdown,
    review_request,
)


class RegisterModelOperator(PlannedStageOperator):
    """MLflow model version with contract, metrics and lineage; one version per MLflow run."""

    template_fields: Sequence[str] = ("plan", "train", "evaluation")
    operator_extra_links = (ModelVersionLink(),)

    def __init__(self, *, train: Any, evaluation: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.train, self.evaluation = train, evaluation

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg
        from slaflow.settings import airflow_ui_url, mlflow_ui_url

        contract = self.contract
        quality = contract.quality_metric
        value = quality.value(self.evaluation["test_score"])
        ci = sorted(
            quality.value(self.evaluation[k]) for k in ("test_score_ci_low", "test_score_ci_high")
        )
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        run_url = f"{airflow_ui_url()}/dags/{dag_id}/runs/{quote(run_id, safe='')}"
        tags = {
            reg.TAG_AIRFLOW_RUN_ID: run_id,
            reg.TAG_DAG_ID: dag_id,
            reg.TAG_AIRFLOW_RUN_URL: run_url,
            reg.TAG_CONTRACT: json.dumps(contract.to_dict()),
            f"slaflow.test_{quality.name}": repr(value),
            f"slaflow.test_{quality.name}_ci95": json.dumps([round(ci[0], 4), round(ci[1], 4)]),
            "slaflow.stop_reason": str(self.train["stop_reason"]),
            "slaflow.outcome": str(self.train.get("outcome")),
            "slaflow.deadline_met": str(self.train["deadline_met"]).lower(),
            "slaflow.training_seconds": f"{self.train['training_seconds']:.1f}",
            "slaflow.training_mode": contract.training_mode,
        }
        if self.evaluation.get("model_params"):
            tags[reg.TAG_MODEL_PARAMS] = str(int(self.evaluation["model_params"]))
        tags[reg.TAG_ARTIFACT_SHA256] = self._digest(self.train["model_uri"])
        variant = self._variant_digest(self.train["mlflow_run_id"])
        if variant:
            tags[reg.TAG_VARIANT_SHA256] = variant
        description = (
            f"**{contract.model_name}**, trained by Airflow run [{dag_id} / {run_id}]"
            f"({run_url}).\n\n"
            f"- test {quality.name} **{value:.4f}** (95% CI {ci[0]:.4f}-{ci[1]:.4f}) against a "
            f"target of {'>=' if quality.higher_is_better else '<='} "
            f"{contract.target_value:.4f}\n"
            f"- {self.train['epochs']} epoch(s) in {self.train['training_seconds']:.0f} s of a "
            f"{contract.deadline_s:.0f} s deadline ({self.train['stop_reason']})\n"
            f"{GATE_PENDING_LINE}"
        )
        version, created = reg.register_version(
            self.mlflow.client,
            contract.model_name,
            self.train["model_uri"],
            self.train["mlflow_run_id"],
            tags,
            description,
        )
        self.log.info(
            "%s model version %s v%s",
            "Registered" if created else "Found existing",
            contract.model_name,
            version.version,
        )
        context["ti"].xcom_push(
            key="model_version_url",
            value=(
                f"{mlflow_ui_url(self.mlflow.tracking_uri)}/#/models/"
                f"{quote(contract.model_name, safe='')}/versions/{version.version}"
            ),
        )
        return {
            "model_name": contract.model_name,
            "model_version": str(version.version),
            "mlflow_run_id": self.train["mlflow_run_id"],
            "created": created,
        }

    def _digest(self, model_uri: str) -> str:
        """What the replicas must find when they download this model (the artifact store can
        be written by others than slaflow: a changed file is refused, never served)."""
        import tempfile

        import mlflow

        from ray_jobs.model_format import artifact_digest

        # the hook's client sets the process-wide tracking and registry URIs, through which
        # MLflow resolves a ``models:/m-...`` URI (not through download_artifacts' argument)
        _ = self.mlflow.client
        with tempfile.TemporaryDirectory(prefix="slaflow-digest-") as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=tmp, tracking_uri=self.mlflow.tracking_uri
            )
            digest = artifact_digest(local)
        self.log.info("Model artifacts' SHA-256: %s", digest)
        return digest

    def _variant_digest(self, run_id: str) -> str:
        """The int8 variant's digest, when the evaluate task logged one under the run."""
        from ray_jobs.variants import INT8_ARTIFACT_PATH

        if not self.mlflow.client.list_artifacts(run_id, INT8_ARTIFACT_PATH):
            return ""
        return self._digest(f"runs:/{run_id}/{INT8_ARTIFACT_PATH}")


class GateOperator(PlannedStageOperator):
    """The promotion gate's decision against the current champion, and whether a person must
    make it (the contract's ``review_policy``). Records the report on the model version.

    Read-and-tag only (no alias moves): a retry recomputes the same decision.
    """

    template_fields: Sequence[str] = ("plan", "evaluation", "registration")

    def __init__(self, *, evaluation: Any, registration: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.evaluation, self.registration = evaluation, registration

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg

        contract = self.contract
        client = self.mlflow.client
        version = self.registration["model_version"]
        champion = reg.get_champion(client, contract.model_name, contract.target_metric)
        if champion is not None and champion.version == version:
            self.log.info("v%s is already champion (a previous try promoted it)", version)
            raw = reg.version_tag(client, contract.model_name, version, reg.TAG_GATE_REPORT)
            return {
                "already_champion": True,
                "decision": json.loads(raw or "{}"),
                "review": {"required": False, "reasons": ["already champion"]},
                "model_name": contract.model_name,
                "model_version": version,
            }
        decision = decide_promotion(
            self.evaluation["test_score"],
            contract.target_score,
            contract.min_gain_over_champion,
            champion,
            contract.target_metric,
            test_rows=int(self.evaluation["test_rows"]),
        )
        ci = (self.evaluation["test_score_ci_low"], self.evaluation["test_score_ci_high"])
        review = review_request(
            decision,
            policy=contract.review_policy,
            accuracy_noise=(ci[1] - ci[0]) / 2,
            margin=contract.review_margin,
            candidate_cost=self.evaluation.get("model_params"),
            max_cost_ratio=contract.review_max_cost_ratio,
        )
        report = {
            f"test_{contract.target_metric}_ci95": sorted(
                contract.quality_metric.value(c) for c in ci
            ),
            "test_rows": self.evaluation.get("test_rows"),
            "candidate_cost": self.evaluation.get("model_params"),
            "review": review.to_dict(),
        }
        reg.record_gate(
            client, contract.model_name, version, decision, report, pending_review=review.required
        )
        for reason in decision.reasons:
            self.log.info("Gate: %s", reason)
        self.log.info(
            "Gate for %s v%s: %s; review %s (%s)",
            contract.model_name,
            version,
            decision.summary(),
            "REQUIRED" if review.required else "not needed",
            "; ".join(review.reasons),
        )
        return {
            "already_champion": False,
            "decision": decision.to_dict(),
            "review": review.to_dict(),
            "report": report,
            "model_name": contract.model_name,
            "model_version": version,
            "report_markdown": gate_report_markdown(
                model_name=contract.model_name,
                version=version,
                decision=decision,
                review=review,
                ci=ci,
                review_timeout_s=contract.review_timeout_s,
            ),
        }


class PromoteModelOperator(PlannedStageOperator):
    """Apply the gate (and the review's answer, when there was one): move the aliases.

    The champion is re-read here (not at plan time) and this task runs one at a time per DAG
    (``max_active_tis_per_dag=1``), so two runs cannot both promote against a stale champion.
    A retry finds the aliases already moved and moves nothing.
    """

    template_fields: Sequence[str] = ("plan", "evaluation", "registration", "gate", "review")

    def __init__(
        self, *, evaluation: Any, registration: Any, gate: Any, review: Any = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("max_active_tis_per_dag", 1)
        kwargs.setdefault("trigger_rule", "none_failed")  # the review is skipped when not needed
        super().__init__(**kwargs)
        self.evaluation, self.registration = evaluation, registration
        self.gate, self.review = gate, review

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg

        with reg.model_lease(self.mlflow.client, self.contract.model_name, run_marker(context)):
            return self._promote(context)

    def _promote(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg

        contract = self.contract
        client = self.mlflow.client
        version = self.registration["model_version"]
        champion = reg.get_champion(client, contract.model_name, contract.target_metric)
        if self.gate.get("already_champion") or (
            champion is not None and champion.version == version
        ):
            self.log.info("v%s is already champion (a previous try promoted it)", version)
            return {
                "promoted": True,
                "alias": CHAMPION,
                "model_version": version,
                "decision": self.gate["decision"],
            }
        gate_decision = PromotionDecision.from_dict(self.gate["decision"])
        now_champion = None if champion is None else champion.version
        if now_champion != gate_decision.champion_version:
            self.log.warning(
                "The champion moved from v%s to v%s since the gate: deciding again",
                gate_decision.champion_version,
                now_champion,
            )
        review = (
            None
            if not self.review
            else ReviewOutcome(
                approved=bool(self.review["approved"]),
                responder=self.review["responder"],
                timeout_s=contract.review_timeout_s,
            )
        )
        try:
            decision = final_decision(
                gate_decision,
                candidate_accuracy=self.evaluation["test_score"],
                target_accuracy=contract.target_score,
                min_gain_over_champion=contract.min_gain_over_champion,
                champion_now=champion,
                review_required=bool(self.gate["review"]["required"]),
                review=review,
            )
        except ValueError as exc:
            raise AirflowFailException(f"{exc}; clear the review task to ask again") from exc
        for reason in decision.reasons:
            self.log.info("Gate: %s", reason)
        moved = reg.apply_promotion(
            client,
            contract.model_name,
            version,
            decision,
            report={**self.gate.get("report", {}), "review_answer": self.review},
            run_id=self.registration["mlflow_run_id"],
        )
        self.log.info(
            "Decision for %s v%s: %s; aliases set %s",
            contract.model_name,
            version,
            decision.summary(),
            moved,
        )
        if CHAMPION in moved:  # serving must follow: ml_reconcile waits for this run's deploy
            reg.set_serving_intent(
                client, contract.model_name, INTENT_DEPLOYING, version, run_marker(context)
            )
        return {
            "promoted": decision.promote,
            "alias": decision.alias,
            "model_version": version,
            "decision": decision.to_dict(),
            "aliases_moved": moved,
        }


class RollbackModelOperator(StageOperator):
    """Move ``champion`` back to ``previous_champion`` (``ml_rollback``); deploy follows.

    Idempotent: the demoted version is tagged with this Airflow run, so a retry finds the
    rollback done and returns the same answer. No ``previous_champion``: fails, saying so.
    Returns a run plan for the deploy task (the restored version's own contract) and, under
    ``rollback``, the champion restored and the version demoted.
    """

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg

        model = str(context["params"]["model_name"])
        client = self.mlflow.client
        marker = run_marker(context)
        try:
            with reg.model_lease(client, model, marker):
                moved = reg.rollback(client, model, marker)
                reg.set_serving_intent(client, model, INTENT_DEPLOYING, moved["champion"], marker)
        except reg.RollbackError as exc:
            raise AirflowFailException(str(exc)) from exc
        raw = json.loads(
            reg.version_tag(client, model, moved["champion"], reg.TAG_CONTRACT) or "{}"
        )
        raw["model_name"] = model
        try:
            contract = RunContract.from_dict(raw)  # from the registry: validated, not trusted
        except ValueError as exc:
            raise AirflowFailException(
                f"the contract recorded on {model} v{moved['champion']} is not valid: {exc}"
            ) from exc
        self.log.info(
            "%s: champion is v%s again%s",
            model,
            moved["champion"],
            f"; v{moved['demoted']} demoted" if moved["demoted"] else "",
        )
        plan = RunPlan.make(
            contract,
            run_key=run_key(context),
            champion=None,
            num_workers=1,
            worker_reason="rollback: no training",
        )
        return {**plan.to_dict(), "rollback": moved}
