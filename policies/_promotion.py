"""Promotion gate: does a candidate model replace the champion?

Shaped like MLflow's threshold validation: every check passes or fails with a reason a
reviewer can read in the Airflow log and on the model version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous_champion"


@dataclass(frozen=True)
class ChampionRecord:
    """The model version now holding the ``champion`` alias and its test accuracy."""

    version: str
    accuracy: float


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

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(f"{'PASS' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in self.checks)

    def summary(self) -> str:
        verdict = "promote to champion" if self.promote else "keep as challenger"
        return f"{verdict}: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "alias": self.alias,
            "candidate_accuracy": self.candidate_accuracy,
            "required_accuracy": self.required_accuracy,
            "champion_version": self.champion_version,
            "champion_accuracy": self.champion_accuracy,
            "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail}
                       for c in self.checks],
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
) -> PromotionDecision:
    """Promote iff the target is met and the champion (if any) is beaten by the minimum gain."""
    if not 0.0 <= candidate_accuracy <= 1.0:
        raise ValueError(f"candidate_accuracy must be within [0, 1], got {candidate_accuracy!r}")
    checks = [
        GateCheck(
            "target_accuracy",
            candidate_accuracy >= target_accuracy,
            f"accuracy {candidate_accuracy:.4f} vs target {target_accuracy:.4f}",
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
                f"gain {gain:+.4f} over champion v{champion.version} "
                f"({champion.accuracy:.4f}) vs required {min_gain_over_champion:+.4f}",
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
    )
