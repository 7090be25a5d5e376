"""Accuracy policy: will the target be reached in time, and how many epochs will it take?

The learning curve is extrapolated with a power law on the error, ``1 - acc(e) = a * e**-b``
(fitted by least squares in log-log space on the most recent epochs), the standard shape of
learning curves of SGD-trained models. Everything here is pure: curves and budgets come in,
numbers and a verdict go out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

#: Epochs seen before the policy will call a target unreachable (early curves are too noisy).
MIN_EPOCHS_FOR_VERDICT = 4
#: Epochs without a new best before a curve counts as a plateau.
PLATEAU_PATIENCE = 6
#: The extrapolation must miss by this factor before the target is called unreachable.
UNREACHABLE_MARGIN = 1.5
#: Most recent epochs used for the fit.
FIT_WINDOW = 8


class Outcome(StrEnum):
    """How training ended, as the promotion gate and the registry see it."""

    TARGET_MET = "target_met"
    DEADLINE_TRUNCATED = "deadline_truncated"
    TARGET_UNREACHABLE = "target_unreachable"


@dataclass(frozen=True)
class CurveFit:
    """``1 - acc(epoch) = a * epoch**-b``."""

    a: float
    b: float

    def accuracy_at(self, epoch: float) -> float:
        return 1.0 - self.a * float(max(epoch, 1e-9) ** -self.b)

    def epochs_to(self, target: float) -> float:
        """Epochs at which the fitted curve reaches ``target`` (inf if never)."""
        if self.b <= 1e-6:
            return math.inf
        err = 1.0 - target
        if err <= 0:
            return math.inf
        try:
            return float((self.a / err) ** (1.0 / self.b))
        except OverflowError:
            return math.inf


def fit_learning_curve(val_accuracy: Sequence[float], window: int = FIT_WINDOW) -> CurveFit | None:
    """Fit the power law to per-epoch validation accuracy (epoch 1 first).

    ``None`` with fewer than three usable points. A curve that is not improving gets
    ``b <= 0`` (never reaches a higher target).
    """
    points = [
        # Scores of any metric: 1 - score is the distance from perfect (rmse's score is
        # 1 - rmse, below 0 for errors above 1), so only a perfect score is left out.
        (float(e), 1.0 - acc)
        for e, acc in enumerate(val_accuracy, start=1)
        if acc < 1.0
    ]
    points = points[-window:]
    if len(points) < 3:
        return None
    xs = [math.log(e) for e, _ in points]
    ys = [math.log(max(err, 1e-6)) for _, err in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return CurveFit(a=math.exp(my - slope * mx), b=-slope)


@dataclass(frozen=True)
class AccuracyOutlook:
    reachable: bool
    predicted_epochs_needed: float
    predicted_accuracy_at_budget: float | None
    detail: str


def assess_target(
    val_accuracy: Sequence[float],
    target: float,
    epochs_affordable: float,
) -> AccuracyOutlook:
    """Can ``target`` still be reached within ``epochs_affordable`` total epochs?

    ``epochs_affordable`` is what the deadline (and ``max_epochs``) allow in total, epochs
    already done included. Unreachable only with evidence: at least
    :data:`MIN_EPOCHS_FOR_VERDICT` epochs, and either a plateau of
    :data:`PLATEAU_PATIENCE` epochs or an extrapolation that misses by
    :data:`UNREACHABLE_MARGIN` times.
    """
    done = len(val_accuracy)
    best = max(val_accuracy, default=-math.inf)
    if best >= target:
        return AccuracyOutlook(True, float(done), best, f"reached {best:.4f} >= {target:.4f}")
    fit = fit_learning_curve(val_accuracy)
    needed = math.inf if fit is None else fit.epochs_to(target)
    at_budget = None if fit is None else min(1.0, fit.accuracy_at(epochs_affordable))
    if done < MIN_EPOCHS_FOR_VERDICT or fit is None:
        return AccuracyOutlook(True, needed, at_budget, f"{done} epochs: too early to extrapolate")
    best_epoch = 1 + max(range(done), key=lambda i: val_accuracy[i])
    if done - best_epoch >= PLATEAU_PATIENCE:
        return AccuracyOutlook(
            False,
            math.inf,
            best,
            f"plateau: best {best:.4f} at epoch {best_epoch}, no gain in {done - best_epoch} "
            f"epochs; target {target:.4f}",
        )
    if needed > UNREACHABLE_MARGIN * epochs_affordable:
        shown = "never" if math.isinf(needed) else f"~{needed:.0f} epochs"
        return AccuracyOutlook(
            False,
            needed,
            at_budget,
            f"learning curve reaches {target:.4f} after {shown}; the deadline affords "
            f"{epochs_affordable:.0f} (predicted {at_budget:.4f} by then)",
        )
    return AccuracyOutlook(
        True, needed, at_budget, f"on track: ~{needed:.1f} epochs to {target:.4f}"
    )


@dataclass(frozen=True)
class EpochEstimate:
    """Epochs a contract will need, and how sure we are of it."""

    epochs: int  # planned epochs (to the target, or max_epochs when unknown)
    min_epochs: int  # epochs that are certainly needed
    reachable: bool  # False: history says the target is out of reach
    source: str


def estimate_epochs_needed(
    past_curves: Sequence[Sequence[float]], target: float, max_epochs: int
) -> EpochEstimate:
    """Epochs to ``target`` from the validation curves of past runs of the same model.

    Takes the slowest past run that reached the target (a conservative plan). Without
    history the plan is ``max_epochs``, with one epoch certainly needed.
    """
    reached = [
        next(i for i, acc in enumerate(c, start=1) if acc >= target)
        for c in past_curves
        if any(acc >= target for acc in c)
    ]
    if reached:
        epochs = min(max_epochs, max(reached))
        return EpochEstimate(
            epochs,
            min(epochs, min(reached)),
            True,
            f"{len(reached)} of {len(past_curves)} past runs reached "
            f"{target:.4f}, after {min(reached)}-{max(reached)} epochs",
        )
    long_runs = [c for c in past_curves if len(c) >= max_epochs]
    if long_runs:
        best = max(max(c) for c in long_runs)
        return EpochEstimate(
            max_epochs,
            max_epochs,
            False,
            f"{len(long_runs)} past runs of >= {max_epochs} epochs peaked at "
            f"{best:.4f} < target {target:.4f}",
        )
    if past_curves:
        fits = [f for f in (fit_learning_curve(c) for c in past_curves) if f is not None]
        guesses = [f.epochs_to(target) for f in fits]
        finite = [g for g in guesses if math.isfinite(g)]
        if finite:
            epochs = min(max_epochs, math.ceil(max(finite)))
            longest = max(len(c) for c in past_curves)
            return EpochEstimate(
                epochs,
                min(epochs, longest),
                True,
                f"extrapolated from {len(fits)} past runs: ~{epochs} epochs",
            )
    return EpochEstimate(
        max_epochs, 1, True, f"no past runs reached the target: planning max_epochs={max_epochs}"
    )
