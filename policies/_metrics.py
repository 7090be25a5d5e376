"""Quality metrics: what a contract's ``target_metric`` means, how it is computed, and how
every quality decision (early stop, accuracy outlook, gate, review, canary) compares it.

Every decision works on one number, the **score**: higher is better and 1 is perfect.
For a metric where higher is better and 1 is perfect (accuracy, f1_macro, roc_auc, r2) the
score is the metric itself; for an error (rmse, mae) it is ``1 - error``. So ``1 - score`` is
always the distance from perfect (the learning-curve power law fits it as it is), and a score
difference is a difference in the metric's own units (a gain of 0.5 in score is 0.5 less RMSE),
so ``min_gain_over_champion`` and ``stop_margin`` keep the metric's units.

Pure NumPy: no engine import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

CLASSIFICATION: Final = "classification"
REGRESSION: Final = "regression"
TASKS: Final = (CLASSIFICATION, REGRESSION)


@dataclass(frozen=True)
class Metric:
    name: str
    task: str
    higher_is_better: bool
    title: str
    binary_only: bool = False

    def score(self, value: float) -> float:
        """The metric as a score: higher is better, 1 is perfect."""
        return float(value) if self.higher_is_better else 1.0 - float(value)

    def value(self, score: float) -> float:
        """The metric's value of a score (inverse of :meth:`score`)."""
        return float(score) if self.higher_is_better else 1.0 - float(score)

    def gain(self, candidate: float, baseline: float) -> float:
        """How much better ``candidate`` is than ``baseline``, in the metric's units."""
        return candidate - baseline if self.higher_is_better else baseline - candidate

    def describe(self, value: float) -> str:
        return f"{self.name} {value:.4g}"


METRICS: Final[dict[str, Metric]] = {
    m.name: m
    for m in (
        Metric("accuracy", CLASSIFICATION, True, "share of rows classified right"),
        Metric("f1_macro", CLASSIFICATION, True, "F1 averaged over classes"),
        Metric("roc_auc", CLASSIFICATION, True, "area under the ROC curve", binary_only=True),
        Metric("rmse", REGRESSION, False, "root mean squared error"),
        Metric("mae", REGRESSION, False, "mean absolute error"),
        Metric("r2", REGRESSION, True, "coefficient of determination"),
    )
}

#: The metric a task is judged by when the contract names none.
DEFAULT_METRIC: Final = {CLASSIFICATION: "accuracy", REGRESSION: "rmse"}


def metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}: use one of {', '.join(METRICS)}") from None


def compute_metric(
    name: str, y_true: np.ndarray, prediction: np.ndarray, n_classes: int = 0
) -> float:
    """The metric over rows. ``prediction``: class probabilities ``[n, classes]`` for a
    classification metric, predicted values ``[n]`` for a regression one."""
    m = metric(name)
    y_true = np.asarray(y_true)
    prediction = np.asarray(prediction)
    if len(y_true) == 0:
        raise ValueError(f"{name}: no rows to score")
    if m.task == REGRESSION:
        err = prediction.reshape(-1).astype("float64") - y_true.astype("float64")
        if name == "rmse":
            return float(np.sqrt(np.mean(err**2)))
        if name == "mae":
            return float(np.mean(np.abs(err)))
        total = float(np.sum((y_true - y_true.mean()) ** 2))
        return 1.0 - float(np.sum(err**2)) / total if total > 0 else 0.0
    labels = y_true.astype("int64")
    classes = max(n_classes, prediction.shape[1] if prediction.ndim == 2 else 0)
    if name == "accuracy":
        return float(np.mean(prediction.argmax(axis=1) == labels))
    if name == "f1_macro":
        return f1_macro(labels, prediction.argmax(axis=1), classes)
    return roc_auc(labels, prediction[:, 1] if prediction.ndim == 2 else prediction)


def f1_macro(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Macro F1 over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's rule)."""
    f1s = []
    for c in range(n_classes):
        tp = int(np.sum((y_pred == c) & (y_true == c)))
        fp = int(np.sum((y_pred == c) & (y_true != c)))
        fn = int(np.sum((y_pred != c) & (y_true == c)))
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def roc_auc(y_true: np.ndarray, positive_score: np.ndarray) -> float:
    """Binary ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half."""
    y = np.asarray(y_true).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return 0.5
    order = np.argsort(positive_score, kind="mergesort")
    ranks = np.empty(len(order), dtype="float64")
    sorted_scores = np.asarray(positive_score)[order]
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion (the closed form for accuracy)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def metric_interval(
    name: str,
    y_true: np.ndarray,
    prediction: np.ndarray,
    n_classes: int = 0,
    *,
    resamples: int = 400,
    seed: int = 0,
) -> tuple[float, float]:
    """95% interval of the metric on these rows: Wilson for accuracy, otherwise a percentile
    bootstrap over rows (seeded: the same rows give the same interval)."""
    y_true = np.asarray(y_true)
    prediction = np.asarray(prediction)
    if name == "accuracy":
        correct = int(np.sum(prediction.argmax(axis=1) == y_true.astype("int64")))
        return wilson_interval(correct, len(y_true))
    rng = np.random.default_rng(seed)
    n = len(y_true)
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        values.append(compute_metric(name, y_true[idx], prediction[idx], n_classes))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass(frozen=True)
class TaskInference:
    task: str | None  # None: ambiguous, the contract must say
    reason: str


#: A numeric label with at most this many distinct values *and* only whole numbers may be
#: classes; with more than this it is a quantity.
MAX_IMPLICIT_CLASSES: Final = 20


def infer_task(distinct_values: Sequence[object], numeric: bool, rows: int) -> TaskInference:
    """Whether a label column is a classification or a regression target, only when that is
    unambiguous: text labels are classes; numbers with a fraction, or many distinct values,
    are a quantity; a few whole numbers (0/1, 1..5) could be either and must be stated."""
    if not numeric:
        return TaskInference(CLASSIFICATION, "the label is text: its values are classes")
    values = [float(v) for v in distinct_values]  # type: ignore[arg-type]
    if any(not float(v).is_integer() for v in values):
        return TaskInference(REGRESSION, "the label has fractional values: a quantity")
    if len(values) > MAX_IMPLICIT_CLASSES:
        return TaskInference(
            REGRESSION,
            f"the label has over {MAX_IMPLICIT_CLASSES} distinct whole numbers: a quantity",
        )
    return TaskInference(
        None,
        f"the label holds {len(values)} distinct whole numbers ({sorted(values)[:6]}"
        f"{' ...' if len(values) > 6 else ''}): they could be classes or a quantity",
    )


def task_fit_problem(metric_name: str, task: str, n_classes: int, label: str) -> str | None:
    """Why a target metric cannot judge the data as prepared (None: it can): a metric of the
    other task, or a two-class metric on more classes. The message names the field and fix."""
    m = metric(metric_name)
    if task != m.task:
        return (
            f"contract field 'target_metric': {m.name!r} judges {m.task} and the label "
            f"{label!r} was read as {task}. Fix: set task to '{m.task}', or use a {task} metric"
        )
    if m.binary_only and n_classes != 2:
        return (
            f"contract field 'target_metric': {m.name!r} needs 2 classes and the label has "
            f"{n_classes}. Fix: use accuracy or f1_macro"
        )
    return None


#: Two sound value models answer further apart than ``regression_tolerance`` on at most ~1/4
#: of rows (Chebyshev); the canary's disagreement bound is then set as for two classifiers of
#: this accuracy.
VALUE_CANARY_ACCURACY: Final = 0.8


def regression_tolerance(rmse_a: float, rmse_b: float) -> float:
    """How far apart two regression models' answers to one row may be before they count as
    disagreeing: twice the larger RMSE (each model alone is usually that close to the truth,
    so two sound models are rarely further apart)."""
    return 2.0 * max(rmse_a, rmse_b, 1e-9)
