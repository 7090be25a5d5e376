"""Spark MLlib training for tabular data (``training_mode: spark_mllib``).

A multinomial logistic regression fitted by MLlib on the prepared Parquet splits, on whatever
master the session runs on (``local[*]`` or a standalone cluster), under the dynaSpark
controller when the operator wraps it in ``spark_jobs.deadline.run_with_deadline``.

What leaves training is the same SavedModel as every other slaflow model, so evaluation,
registration and Ray Serve take it unchanged: MLlib's coefficients (on raw features) are
rewritten for ``build_mlp(hidden_units=())``, which standardises first:
``W x + b = (W * std) z + (W . mean + b)`` with ``z = (x - mean) / std``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spark_jobs.prepare import LABEL_INDEX


@dataclass(frozen=True)
class MllibFit:
    kernel: np.ndarray  # (n_features, n_classes), for standardised inputs
    bias: np.ndarray  # (n_classes,)
    val_accuracy: float
    train_accuracy: float
    iterations: int
    objective_history: list[float]


def standardised_weights(
    coefficients: np.ndarray, intercepts: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Raw-feature logits ``W x + b`` as a Dense layer after ``(x - mean) / std``.

    ``std`` of 0 is taken as 1, as ``build_mlp``'s Normalization does."""
    w = np.asarray(coefficients, dtype="float64")  # (n_classes, n_features)
    m = np.asarray(mean, dtype="float64")
    s = np.where(np.asarray(std, dtype="float64") > 0, std, 1.0)
    kernel = (w * s).T
    bias = np.asarray(intercepts, dtype="float64") + w @ m
    return kernel.astype("float32"), bias.astype("float32")


def fit_logistic(
    spark: Any,
    *,
    train_path: str,
    val_path: str,
    profile: dict[str, Any],
    max_iter: int,
    reg_param: float = 1e-4,
) -> MllibFit:
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler

    features = list(profile["feature_names"])
    assembler = VectorAssembler(inputCols=features, outputCol="features")
    train = assembler.transform(spark.read.parquet(train_path)).select("features", LABEL_INDEX)
    val = assembler.transform(spark.read.parquet(val_path)).select("features", LABEL_INDEX)
    n_classes = len(profile["classes"])
    model = LogisticRegression(
        featuresCol="features",
        labelCol=LABEL_INDEX,
        family="multinomial",
        maxIter=max_iter,
        regParam=reg_param,
        elasticNetParam=0.0,
        standardization=True,
    ).fit(train)
    coef = model.coefficientMatrix.toArray()
    intercepts = model.interceptVector.toArray()
    if coef.shape[0] < n_classes:  # classes absent from the train split get no row
        coef = np.vstack([coef, np.zeros((n_classes - coef.shape[0], coef.shape[1]))])
        intercepts = np.concatenate([intercepts, np.full(n_classes - len(intercepts), -1e3)])
    kernel, bias = standardised_weights(
        coef, intercepts, profile["feature_mean"], profile["feature_std"]
    )
    summary = model.summary
    return MllibFit(
        kernel,
        bias,
        float(model.evaluate(val).accuracy),
        float(summary.accuracy),
        int(summary.totalIterations),
        [float(v) for v in summary.objectiveHistory],
    )
