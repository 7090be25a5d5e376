"""Ray Job: held-out test metrics of a logged model, written to its MLflow run.

Logs ``test_accuracy``, ``test_loss``, a 95% Wilson interval of the accuracy (the gate and a
reviewer need the uncertainty, not just a point), the parameter count (the gate's serving-cost
proxy) and a confusion-matrix PNG. It also builds the cheaper servable variant (int8) and
scores it on the same rows: each variant's accuracy is measured here, once per version, and
the serving profile (latency) can then be reused across versions of the same architecture.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ray_jobs import data_io
from ray_jobs.entry import run_entrypoint


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _plot_confusion(cm: np.ndarray, classes: list[Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_title("Test-set confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_evaluation(spec: dict[str, Any]) -> dict[str, Any]:
    import mlflow

    from ray_jobs.model_format import Predictor, find_model_dir
    from ray_jobs.variants import VARIANT_FULL, VARIANT_INT8, Int8Predictor, log_int8_variant

    # Both, explicitly: a stray MLFLOW_REGISTRY_URI on the node would otherwise send
    # model lookups to another registry.
    mlflow.set_tracking_uri(spec["tracking_uri"])
    mlflow.set_registry_uri(spec["tracking_uri"])
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=spec["model_uri"], dst_path=tmp)
        predictor = Predictor(find_model_dir(local))
        x, y = data_io.read_xy(spec["test_path"], predictor.metadata.feature_names)
        proba = predictor.predict_proba(x)
        pred = proba.argmax(axis=1)
        correct = int((pred == y).sum())
        loss = float(np.mean(-np.log(np.clip(proba[np.arange(len(y)), y], 1e-7, 1.0))))
        lo, hi = wilson_interval(correct, len(y))
        classes = list(predictor.metadata.classes)
        cm = confusion_matrix(y, pred, len(classes))
        metrics = {
            "test_accuracy": correct / len(y),
            "test_loss": loss,
            "test_accuracy_ci_low": lo,
            "test_accuracy_ci_high": hi,
            "test_rows": float(len(y)),
            "model_params": float(predictor.parameter_count()),
        }
        variants = {
            VARIANT_FULL: {
                "accuracy": correct / len(y),
                "size_bytes": predictor.parameter_count() * 4,
            }
        }
        variant_uri = ""
        try:
            variant_uri = log_int8_variant(
                predictor,
                find_model_dir(local),
                spec["mlflow_run_id"],
                spec["feature_mean"],
                spec["feature_std"],
            )
        except ValueError as exc:  # no Dense layers: the full model serves alone
            print(f"[evaluate] no int8 variant: {exc}", flush=True)
        if variant_uri:
            int8 = Int8Predictor(
                mlflow.artifacts.download_artifacts(variant_uri, dst_path=f"{tmp}/int8")
            )
            variants[VARIANT_INT8] = {
                "accuracy": float((int8.predict_proba(x).argmax(axis=1) == y).mean()),
                "size_bytes": int8.weight_bytes,
            }
        with mlflow.start_run(run_id=spec["mlflow_run_id"]):
            mlflow.log_metrics(metrics)
            mlflow.log_metrics(
                {f"serving_{v}_accuracy": d["accuracy"] for v, d in variants.items()}
            )
            png = Path(tmp) / "confusion_matrix.png"
            _plot_confusion(cm, classes, png)
            mlflow.log_artifact(str(png), artifact_path="evaluation")
            mlflow.log_dict(
                {"classes": classes, "matrix": cm.tolist()}, "evaluation/confusion_matrix.json"
            )
    return {
        **metrics,
        "test_rows": len(y),
        "variants": variants,
        "variant_uri": variant_uri,
        "model_signature": predictor.signature(),
    }


if __name__ == "__main__":
    run_entrypoint(run_evaluation)
