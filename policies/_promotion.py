"""Promotion gate: does a candidate model replace the champion?

Shaped like MLflow's threshold validation: every check passes or fails with a reason a
reviewer can read in the Airflow log and on the model version.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from policies._metrics import metric

#: Fewest test rows a gate decision may rest on alone: below it the test metric's interval is
#: too wide to tell models apart (accuracy's 95% CI half-width is ~0.18 at 30 rows), so the
#: gate does not promote by itself: a person decides (review) or it refuses, saying why.
MIN_TEST_ROWS = 30

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous_champion"


@dataclass(frozen=True)
class ChampionRecord:
    """The model version now holding the ``champion`` alias and its test accuracy."""

    version: str
    accuracy: float
    #: Serving cost proxy: the model's parameter count (latency and replicas scale with it).
    cost: float | None = None


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class PromotionDecision:
    """The gate's verdict with every check that led to it."""

    promote: bool
    alias: str
    candidate_accuracy: float
    required_accuracy: float
    champion_version: str | None
    champion_accuracy: float | None
    checks: tuple[GateCheck, ...]
    champion_cost: float | None = None
    #: The contract's target_metric; the ``*_accuracy`` fields hold its scores
    #: (``policies.Metric.score``: the metric itself for accuracy).
    metric_name: str = "accuracy"

    def shown(self, score: float | None) -> str:
        """A score as the metric's value, e.g. ``rmse 52.31``."""
        return "-" if score is None else f"{metric(self.metric_name).value(score):.4f}"

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(f"{'PASS' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in self.checks)

    def summary(self) -> str:
        verdict = "promote to champion" if self.promote else "keep as challenger"
        return f"{verdict}: " + "; ".join(self.reasons)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PromotionDecision:
        """Inverse of :meth:`to_dict` (a decision carried between tasks in XCom)."""
        return cls(
            promote=bool(raw["promote"]),
            alias=str(raw["alias"]),
            candidate_accuracy=float(raw["candidate_accuracy"]),
            required_accuracy=float(raw["required_accuracy"]),
            champion_version=raw.get("champion_version"),
            champion_accuracy=raw.get("champion_accuracy"),
            checks=tuple(
                GateCheck(str(c["name"]), bool(c["passed"]), str(c["detail"]))
                for c in raw["checks"]
            ),
            champion_cost=raw.get("champion_cost"),
            metric_name=str(raw.get("metric_name", "accuracy")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "alias": self.alias,
            "candidate_accuracy": self.candidate_accuracy,
            "required_accuracy": self.required_accuracy,
            "champion_version": self.champion_version,
            "champion_accuracy": self.champion_accuracy,
            "metric_name": self.metric_name,
            "champion_cost": self.champion_cost,
            "checks": [
                {"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks
            ],
        }


def required_accuracy(
    target_accuracy: float, min_gain: float, champion: ChampionRecord | None
) -> float:
    """The accuracy a candidate needs: the target, and the champion's plus the minimum gain."""
    if champion is None:
        return target_accuracy
    return max(target_accuracy, champion.accuracy + min_gain)


def decide_promotion(
    candidate_accuracy: float,
    target_accuracy: float,
    min_gain_over_champion: float,
    champion: ChampionRecord | None,
    metric_name: str = "accuracy",
    test_rows: int | None = None,
) -> PromotionDecision:
    """Promote iff the target is met and the champion (if any) is beaten by the minimum gain,
    on a test set of at least :data:`MIN_TEST_ROWS` rows (when ``test_rows`` is given).

    Scores in ``metric_name`` (``policies.Metric.score``: higher is better, the metric itself
    for accuracy); ``min_gain_over_champion`` in the metric's units."""
    m = metric(metric_name)
    if not -1e15 < candidate_accuracy <= 1.0:
        raise ValueError(f"candidate score must be finite and <= 1, got {candidate_accuracy!r}")
    op = ">=" if m.higher_is_better else "<="
    checks = [
        GateCheck(
            "target_accuracy" if metric_name == "accuracy" else f"target_{metric_name}",
            candidate_accuracy >= target_accuracy,
            f"{metric_name} {m.value(candidate_accuracy):.4f} vs target {op} "
            f"{m.value(target_accuracy):.4f}",
        )
    ]
    if champion is None:
        checks.append(GateCheck("champion", True, "no champion yet: nothing to beat"))
    else:
        gain = candidate_accuracy - champion.accuracy
        checks.append(
            GateCheck(
                "gain_over_champion",
                gain >= min_gain_over_champion,
                f"gain {gain:+.4f} in {metric_name} over champion v{champion.version} "
                f"({m.value(champion.accuracy):.4f}) vs required {min_gain_over_champion:+.4f}",
            )
        )
    if test_rows is not None:
        checks.append(
            GateCheck(
                TEST_SET_CHECK,
                test_rows >= MIN_TEST_ROWS,
                f"{test_rows} test rows"
                + (
                    ""
                    if test_rows >= MIN_TEST_ROWS
                    else f", fewer than {MIN_TEST_ROWS}: too few to support a decision alone. "
                    f"Use more data or a larger test_fraction, or set review_policy "
                    f"'borderline' to let a person decide"
                ),
            )
        )
    promote = all(c.passed for c in checks)
    return PromotionDecision(
        promote=promote,
        alias=CHAMPION if promote else CHALLENGER,
        candidate_accuracy=candidate_accuracy,
        required_accuracy=required_accuracy(target_accuracy, min_gain_over_champion, champion),
        champion_version=None if champion is None else champion.version,
        champion_accuracy=None if champion is None else champion.accuracy,
        checks=tuple(checks),
        champion_cost=None if champion is None else champion.cost,
        metric_name=metric_name,
    )


TEST_SET_CHECK = "test_set_size"


REVIEW_POLICIES = ("never", "borderline", "always")


@dataclass(frozen=True)
class ReviewRequest:
    """Whether a person must approve the gate's decision, and why (shown in the approval)."""

    required: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"required": self.required, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class ReviewOutcome:
    """A person's answer. ``responder`` None: nobody answered before the review timed out."""

    approved: bool
    responder: str | None
    timeout_s: float | None = None


def review_request(
    decision: PromotionDecision,
    *,
    policy: str,
    accuracy_noise: float,
    margin: float,
    candidate_cost: float | None = None,
    max_cost_ratio: float = 0.0,
) -> ReviewRequest:
    """Is the gate's decision borderline, so that a person should make it?

    - ``never``: no review. ``always``: every candidate that meets the target is reviewed.
    - ``borderline``: a candidate that meets the target is reviewed when its gain over the
      champion is within the evaluation's noise of the required gain, on either side
      (|candidate - required| <= max(margin, accuracy_noise), ``accuracy_noise`` being the
      half-width of the test accuracy's 95% interval), or when it would be promoted but costs
      more than ``max_cost_ratio`` x the champion to serve (0 disables the cost rule).

    A candidate below the target is never reviewed: the contract makes the target a must.
    """
    if policy not in REVIEW_POLICIES:
        raise ValueError(f"review policy must be one of {REVIEW_POLICIES}, got {policy!r}")
    if accuracy_noise < 0 or margin < 0 or max_cost_ratio < 0:
        raise ValueError("accuracy_noise, margin and max_cost_ratio must be >= 0")
    target = decision.checks[0]
    if policy == "never":
        return ReviewRequest(False, ("review policy 'never': the gate decides alone",))
    if not target.passed:
        return ReviewRequest(False, (f"misses the target ({target.detail}): not reviewable",))
    if policy == "always":
        return ReviewRequest(
            True,
            ("review policy 'always': every candidate that meets the target waits for approval",),
        )
    reasons: list[str] = []
    small = [c for c in decision.checks if c.name == TEST_SET_CHECK and not c.passed]
    if small and all(c.passed for c in decision.checks if c.name != TEST_SET_CHECK):
        reasons.append(f"the gate would promote, but on {small[0].detail.split(',')[0]}")
    if decision.champion_accuracy is not None:
        band = max(margin, accuracy_noise)
        distance = decision.candidate_accuracy - decision.required_accuracy
        if abs(distance) <= band:
            reasons.append(
                f"gain within the noise: {decision.metric_name} "
                f"{decision.shown(decision.candidate_accuracy)} is {distance:+.4f} from the "
                f"required {decision.shown(decision.required_accuracy)}, inside "
                f"+/-{band:.4f} (95% CI half-width {accuracy_noise:.4f}, margin {margin:.4f})"
            )
    champion_cost = decision.champion_cost
    if (
        decision.promote
        and max_cost_ratio > 0
        and candidate_cost is not None
        and champion_cost
        and candidate_cost > max_cost_ratio * champion_cost
    ):
        reasons.append(
            f"higher serving cost: {candidate_cost / champion_cost:.2f}x the champion's "
            f"parameters ({candidate_cost:.0f} vs {champion_cost:.0f}), above the allowed "
            f"{max_cost_ratio:.2f}x"
        )
    if not reasons:
        return ReviewRequest(
            False, ("clear decision: outside the noise band and within the cost ratio",)
        )
    return ReviewRequest(True, tuple(reasons))


def apply_review(decision: PromotionDecision, outcome: ReviewOutcome) -> PromotionDecision:
    """The final decision after a review: approve promotes, reject or no answer does not."""
    if outcome.responder is None:
        waited = "" if outcome.timeout_s is None else f" within {outcome.timeout_s:.0f}s"
        check = GateCheck("human_review", False, f"no answer{waited}: not promoted")
    elif outcome.approved:
        check = GateCheck("human_review", True, f"approved by {outcome.responder}")
    else:
        check = GateCheck("human_review", False, f"rejected by {outcome.responder}")
    promote = outcome.approved and outcome.responder is not None
    return dataclasses.replace(
        decision,
        promote=promote,
        alias=CHAMPION if promote else CHALLENGER,
        checks=(*decision.checks, check),
    )


def final_decision(
    gate_decision: PromotionDecision,
    *,
    candidate_accuracy: float,
    target_accuracy: float,
    min_gain_over_champion: float,
    champion_now: ChampionRecord | None,
    review_required: bool,
    review: ReviewOutcome | None,
) -> PromotionDecision:
    """The promotion decision at promote time, from the gate's and the review's answers.

    If the champion changed since the gate decided (another run promoted while this one
    waited), the gate's comparison is stale: decide again against the new champion, and a
    review given for the old comparison does not count (not promoted when one was required).
    Otherwise apply the review when one was required; ``review`` None then raises ValueError.
    """
    now = None if champion_now is None else champion_now.version
    if now != gate_decision.champion_version:
        decision = decide_promotion(
            candidate_accuracy,
            target_accuracy,
            min_gain_over_champion,
            champion_now,
            gate_decision.metric_name,
        )
        if review_required:
            decision = apply_review(
                decision, ReviewOutcome(False, "slaflow: champion changed during the review")
            )
        return decision
    if not review_required:
        return gate_decision
    if review is None:
        raise ValueError("the gate asked for a review but no answer was recorded")
    return apply_review(gate_decision, review)


def gate_report_markdown(
    *,
    model_name: str,
    version: str,
    decision: PromotionDecision,
    review: ReviewRequest,
    ci: tuple[float, float],
    review_timeout_s: int,
) -> str:
    """The gate report as a reviewer reads it (Airflow's Required Actions, MLflow)."""
    champ = (
        "none yet"
        if decision.champion_version is None
        else f"v{decision.champion_version} at {decision.shown(decision.champion_accuracy)}"
    )
    lo, hi = sorted(metric(decision.metric_name).value(c) for c in ci)
    lines = [
        f"**{model_name} v{version}**: test {decision.metric_name} "
        f"**{decision.shown(decision.candidate_accuracy)}** (95% CI {lo:.4f}-{hi:.4f}); needs "
        f"{decision.shown(decision.required_accuracy)}; champion {champ}.",
        "",
        f"Automatic verdict: **{'promote' if decision.promote else 'keep as challenger'}**",
        "",
        *[f"- {r}" for r in decision.reasons],
        "",
        "Why this waits for you:" if review.required else "Review:",
        *[f"- {r}" for r in review.reasons],
        "",
        "Approve: it becomes `champion` and is deployed. Reject (or no answer within "
        f"{review_timeout_s} s): it stays `challenger`, serving is unchanged.",
    ]
    return "\n".join(lines)


def promotion_description(registered: str, decision: PromotionDecision) -> str:
    """The model version's description once the gate (and review) decided: the registered
    text with its pending gate line replaced by the verdict and every reason."""
    verdict = (
        f"- gate: **{'promoted to champion' if decision.promote else 'not promoted'}**\n"
        + "\n".join(f"  - {r}" for r in decision.reasons)
    )
    return registered.replace(GATE_PENDING_LINE, verdict)


#: The line a freshly registered version's description carries until the gate decides.
GATE_PENDING_LINE = "- gate: pending (see the tags `slaflow.gate.*`)"
