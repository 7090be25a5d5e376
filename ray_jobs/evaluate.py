"""Ray Job: held-out test metrics of a logged model, written to its MLflow run.

Logs every metric of the task (``test_accuracy``, ``test_f1_macro``, ``test_roc_auc`` or
``test_rmse``, ``test_mae``, ``test_r2``), ``test_loss``, a 95% interval of the contract's
target metric (Wilson for accuracy, a bootstrap otherwise: the gate and a reviewer need the
uncertainty, not just a point), its score (``test_score``, what the gate compares), the
parameter count (the gate's serving-cost proxy) and a confusion-matrix PNG. It also builds the
cheaper servable variant (int8) and scores it on the same rows: each variant's accuracy is
measured here, once per version, and
the serving profile (latency) can then be reused across versions of the same architecture.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ray_jobs import data_io
from ray_jobs.entry import run_entrypoint


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


def task_metrics(
    task: str, y: np.ndarray, prediction: np.ndarray, n_classes: int
) -> dict[str, float]:
    """Every metric of the task on the test rows (a later contract may judge by another), and
    the loss: cross-entropy for classes, mean squared error for values."""
    from policies import METRICS, compute_metric

    out = {
        f"test_{name}": compute_metric(name, y, prediction, n_classes)
        for name, m in METRICS.items()
        if m.task == task and (not m.binary_only or n_classes == 2)
    }
    if task == "regression":
        out["test_loss"] = float(np.mean((prediction.reshape(-1) - y) ** 2))
    else:
        out["test_loss"] = float(
            np.mean(-np.log(np.clip(prediction[np.arange(len(y)), y], 1e-7, 1.0)))
        )
    return out


def run_evaluation(spec: dict[str, Any]) -> dict[str, Any]:
    import mlflow

    from policies import compute_metric, metric, metric_interval
    from ray_jobs.model_format import SAVED_MODEL_DIR, find_model_dir, open_predictor
    from ray_jobs.variants import VARIANT_FULL, VARIANT_INT8, LiteRTPredictor, log_int8_variant

    name = str(spec.get("target_metric", "accuracy"))
    quality = metric(name)
    # Both, explicitly: a stray MLFLOW_REGISTRY_URI on the node would otherwise send
    # model lookups to another registry.
    mlflow.set_tracking_uri(spec["tracking_uri"])
    mlflow.set_registry_uri(spec["tracking_uri"])
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = find_model_dir(
            mlflow.artifacts.download_artifacts(artifact_uri=spec["model_uri"], dst_path=tmp)
        )
        predictor = open_predictor(model_dir)
        meta = predictor.metadata
        test_profile = {
            "feature_names": meta.feature_names,
            "encoding": meta.encoding,
            "label_name": data_io.LABEL_VALUE if meta.regression else data_io.LABEL_INDEX,
        }
        variant_uri = ""
        if (model_dir / SAVED_MODEL_DIR).exists():
            try:
                variant_uri = log_int8_variant(model_dir, spec["mlflow_run_id"])
            except ValueError as exc:  # the full model serves alone
                print(f"[evaluate] no int8 variant: {exc}", flush=True)
        else:
            print(
                f"[evaluate] no int8 variant for a {meta.model!r} model (LiteRT converts Keras "
                f"models): the full model serves alone",
                flush=True,
            )
        int8 = (
            LiteRTPredictor(
                mlflow.artifacts.download_artifacts(variant_uri, dst_path=f"{tmp}/int8")
            )
            if variant_uri
            else None
        )
        # The test split streams in chunks: memory holds one chunk of features plus the
        # labels and predictions, not the split.
        ys, preds, int8_preds = [], [], []
        for x_chunk, y_chunk in data_io.iter_xy(spec["test_path"], test_profile):
            ys.append(y_chunk)
            preds.append(predictor.predict_proba(x_chunk))
            if int8 is not None:
                int8_preds.append(int8.predict_proba(x_chunk))
        y, prediction = np.concatenate(ys), np.concatenate(preds)
        classes = list(meta.classes)
        metrics = task_metrics(meta.task, y, prediction, len(classes))
        lo, hi = metric_interval(name, y, prediction, len(classes))
        metrics.update(
            {
                "test_score": quality.score(metrics[f"test_{name}"]),
                # In score space (higher is better): the gate's noise band.
                "test_score_ci_low": min(quality.score(lo), quality.score(hi)),
                "test_score_ci_high": max(quality.score(lo), quality.score(hi)),
                f"test_{name}_ci_low": lo,
                f"test_{name}_ci_high": hi,
                "test_rows": float(len(y)),
                "model_params": float(predictor.parameter_count()),
            }
        )
        if name == "accuracy":  # the v1 names, read by dashboards and older runs
            metrics["test_accuracy_ci_low"], metrics["test_accuracy_ci_high"] = lo, hi
        variants = {
            VARIANT_FULL: {
                "accuracy": metrics["test_score"],
                "size_bytes": predictor.parameter_count() * 4,
            }
        }
        if int8 is not None:
            variants[VARIANT_INT8] = {
                "accuracy": quality.score(
                    compute_metric(name, y, np.concatenate(int8_preds), len(classes))
                ),
                "size_bytes": int8.weight_bytes,
            }
        with mlflow.start_run(run_id=spec["mlflow_run_id"]):
            mlflow.log_metrics(metrics)
            mlflow.log_metrics({f"serving_{v}_score": d["accuracy"] for v, d in variants.items()})
            if not meta.regression:
                cm = confusion_matrix(y, prediction.argmax(axis=1), len(classes))
                png = Path(tmp) / "confusion_matrix.png"
                _plot_confusion(cm, classes, png)
                mlflow.log_artifact(str(png), artifact_path="evaluation")
                mlflow.log_dict(
                    {"classes": classes, "matrix": cm.tolist()}, "evaluation/confusion_matrix.json"
                )
    return {
        **metrics,
        "test_metric": name,
        "test_rows": len(y),
        "variants": variants,
        "variant_uri": variant_uri,
        "model_signature": predictor.signature(),
    }


if __name__ == "__main__":
    run_entrypoint(run_evaluation)
