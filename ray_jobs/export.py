"""What every training mode does at its end: export the best weights as the slaflow model
format (SavedModel + metadata, pyfunc flavour) into the run's MLflow run, with the training
metrics and the learning-curve and allocation plots."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def learning_curve(history: list[dict[str, Any]], stop_accuracy: float, deadline_s: float) -> Any:
    """Accuracy per epoch against the target, and elapsed time against the deadline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (acc_ax, time_ax) = plt.subplots(1, 2, figsize=(10, 4))
    acc_ax.plot(epochs, [row["accuracy"] for row in history], marker="o", label="train")
    acc_ax.plot(epochs, [row["val_accuracy"] for row in history], marker="o", label="validation")
    acc_ax.axhline(stop_accuracy, color="red", linestyle="--", label="stop accuracy")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy vs target")
    acc_ax.legend()
    time_ax.plot(epochs, [row["elapsed_s"] for row in history], marker="o", label="elapsed")
    time_ax.axhline(deadline_s, color="red", linestyle="--", label="deadline")
    time_ax.set(
        xlabel="epoch",
        ylabel="seconds since train task start",
        title="Progress vs deadline",
        ylim=(0, max(deadline_s * 1.05, 1.0)),
    )
    time_ax.legend()
    from matplotlib.ticker import MaxNLocator

    for ax in (acc_ax, time_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def allocation_plot(history: list[dict[str, Any]], stop_accuracy: float, deadline_s: float) -> Any:
    """Progress vs set point, workers vs time, accuracy vs target (the controller at work)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [row["elapsed_s"] for row in history]
    fig, (p_ax, w_ax, a_ax) = plt.subplots(1, 3, figsize=(14, 4))
    prog = [row.get("progress") for row in history]
    sp = [row.get("setpoint") for row in history]
    if any(v is not None for v in prog):
        p_ax.plot(
            t,
            [v if v is not None else float("nan") for v in prog],
            marker="o",
            label="progress (epochs / planned)",
        )
        p_ax.plot(
            t, [v if v is not None else float("nan") for v in sp], linestyle="--", label="set point"
        )
    p_ax.axvline(deadline_s, color="red", linestyle=":", label="deadline")
    p_ax.set(xlabel="s since train start", ylabel="fraction", title="Progress vs set point")
    p_ax.legend()
    w_ax.step(t, [row["workers"] for row in history], where="post")
    w_ax.axvline(deadline_s, color="red", linestyle=":")
    w_ax.set(
        xlabel="s since train start",
        ylabel="workers",
        title="Workers over time",
        ylim=(0, max(row["workers"] for row in history) + 1),
    )
    a_ax.plot(t, [row["val_accuracy"] for row in history], marker="o", label="val accuracy")
    a_ax.axhline(stop_accuracy, color="red", linestyle="--", label="target")
    a_ax.set(xlabel="s since train start", ylabel="accuracy", title="Accuracy vs target")
    a_ax.legend()
    fig.tight_layout()
    return fig


def export_and_log(
    spec: dict[str, Any],
    weights: Any,
    state: dict[str, Any],
    training_seconds: float,
    summary: dict[str, Any],
    plots: bool = True,
) -> str:
    import mlflow
    from mlflow.models import infer_signature

    from ray_jobs import user_loop
    from ray_jobs.features import FeatureEncoder
    from ray_jobs.learners import USER_LOOP, XGBOOST, framework
    from ray_jobs.model_format import ModelMetadata, export_saved_model, export_xgboost
    from ray_jobs.pyfunc import SlaflowPyfunc
    from ray_jobs.worker import model_from_config

    profile = spec["profile"]
    kind = framework(spec)
    metadata = ModelMetadata.of(profile, spec["hidden_units"], str(spec.get("model", "mlp")))
    if kind == "keras":
        model = model_from_config(spec)
        model.set_weights(weights)
    requirements = {
        XGBOOST: ["xgboost-cpu==3.2.0"],
        USER_LOOP: user_loop.pip_requirements(metadata.model) if kind == USER_LOOP else [],
    }.get(kind, ["tensorflow-cpu==2.21.0"])
    # Both, explicitly: a stray MLFLOW_REGISTRY_URI on the node would otherwise send
    # model lookups to another registry.
    mlflow.set_tracking_uri(spec["tracking_uri"])
    mlflow.set_registry_uri(spec["tracking_uri"])
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=spec["mlflow_run_id"]):
        out = Path(tmp) / "model"
        if kind == XGBOOST:
            model_dir = export_xgboost(weights, metadata, out)
        elif kind == USER_LOOP:
            model_dir = user_loop.export_loop_model(weights, metadata, profile, out)
        else:
            model_dir = export_saved_model(model, metadata, out)
        import pandas as pd

        encoder = FeatureEncoder.of_profile(profile)
        # Numbers as doubles: MLflow converts float32 and int inputs up to the schema's type
        # but refuses pandas' default float64 down to float32.
        example = pd.DataFrame(
            {
                c.name: ["a", "b"] if c.kind == "categorical" else np.zeros(2, dtype="float64")
                for c in encoder.columns
            }
        )
        output = (
            pd.DataFrame({"prediction": [0.0, 0.0]})
            if metadata.regression
            else pd.DataFrame({"prediction": [metadata.classes[0]] * 2, "confidence": [1.0, 1.0]})
        )
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=SlaflowPyfunc(),
            artifacts={"model_dir": str(model_dir)},
            signature=infer_signature(example, output),
            pip_requirements=[*requirements, "pandas", "numpy"],
        )
        mlflow.log_metrics(
            {
                "training_seconds": training_seconds,
                "epochs": state["epoch"],
                "best_epoch": state["best_epoch"],
                "best_val_accuracy": state["best_val_accuracy"],
            }
        )
        mlflow.log_metrics(
            {"worker_seconds": summary["worker_seconds"], "resizes": summary["resizes"]}
        )
        if not plots:
            return str(info.model_uri)
        mlflow.log_figure(
            learning_curve(
                state["history"], float(spec["stop_accuracy"]), float(spec["deadline_s"])
            ),
            "training/learning_curve.png",
        )
        mlflow.log_figure(
            allocation_plot(
                state["history"], float(spec["stop_accuracy"]), float(spec["deadline_s"])
            ),
            "training/allocation.png",
        )
        mlflow.log_dict(
            {
                "records": state.get("records", []),
                "segments": state.get("segments", []),
                "history": state["history"],
                **summary,
            },
            "training/allocation.json",
        )
    return str(info.model_uri)
