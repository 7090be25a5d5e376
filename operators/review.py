"""Human review of a borderline promotion, on Airflow's human-in-the-loop operators.

The gate (``GateOperator``) decides whether a person must decide (the contract's
``review_policy``); this task then waits in Airflow's *Required Actions* with the gate report
as its body. Approve: the candidate is promoted and deployed. Reject, or no answer within the
contract's ``review_timeout_s`` (the scheduler applies the default, Reject): it stays
``challenger`` and serving is unchanged; the promote task records which of the three happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk.exceptions import AirflowSkipException

from policies import RunContract


class ReviewPromotionOperator(ApprovalOperator):
    """Approve or reject the gate's candidate; skipped when the gate needs no review.

    Unlike a plain ``ApprovalOperator``, Reject does not skip what follows: the promote task
    must run to record "not promoted" on the model version. Returns
    ``{"approved", "responder", "timed_out"}``; ``responder`` is None when nobody answered.
    """

    template_fields: Sequence[str] = (*ApprovalOperator.template_fields, "plan", "gate")
    ui_color = "#fff3cd"

    def __init__(self, *, plan: Any, gate: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subject", "Promote the challenger?")
        super().__init__(defaults=self.REJECT, **kwargs)
        self.plan, self.gate = plan, gate

    def execute(self, context: Any) -> Any:
        review = self.gate["review"]
        if not review["required"]:
            raise AirflowSkipException("no review needed: " + "; ".join(review["reasons"]))
        contract = RunContract.from_dict(self.plan["contract"])
        self.response_timeout = timedelta(seconds=contract.review_timeout_s)
        self.subject = (
            f"Promote {self.gate['model_name']} v{self.gate['model_version']} to champion?"
        )
        self.body = self.gate["report_markdown"]
        self.log.info(
            "Waiting up to %ds for a person to approve or reject %s v%s in Airflow's "
            "Required Actions",
            contract.review_timeout_s,
            self.gate["model_name"],
            self.gate["model_version"],
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        # HITLOperator's, not ApprovalOperator's: a Reject must not skip the promote task.
        payload = HITLOperator.execute_complete(self, context, event)
        chosen = payload["chosen_options"][0]
        user = payload.get("responded_by_user")
        timed_out = bool(event.get("timedout")) or user is None
        responder = (
            None
            if timed_out
            else str((user or {}).get("name") or (user or {}).get("id") or "unknown user")
        )
        approved = chosen == self.APPROVE and not timed_out
        self.log.info(
            "Review of %s v%s: %s",
            self.gate["model_name"],
            self.gate["model_version"],
            "no answer in time (default: Reject)" if timed_out else f"{chosen} by {responder}",
        )
        return {"approved": approved, "responder": responder, "timed_out": timed_out}
