"""training_mode spark_mllib: MLlib fits on the prepared splits, and the exported SavedModel
predicts what MLlib predicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.quick]


def test_mllib_model_exports_to_the_serving_format(
    spark: Any, prepared: dict[str, Any], tmp_path: Path
) -> None:
    from ray_jobs import data_io
    from ray_jobs.model_format import ModelMetadata, Predictor, build_mlp, export_saved_model
    from spark_jobs.train_mllib import fit_logistic

    fit = fit_logistic(
        spark,
        train_path=prepared["paths"]["train"],
        val_path=prepared["paths"]["val"],
        profile=prepared,
        max_iter=60,
    )
    assert fit.val_accuracy > 0.9 and 1 <= fit.iterations <= 60
    assert fit.objective_history[-1] < fit.objective_history[0]

    model = build_mlp(
        len(prepared["feature_names"]),
        len(prepared["classes"]),
        (),
        prepared["feature_mean"],
        prepared["feature_std"],
        seed=0,
    )
    weights = model.get_weights()
    weights[-2], weights[-1] = fit.kernel, fit.bias
    model.set_weights(weights)
    meta = ModelMetadata(tuple(prepared["feature_names"]), tuple(prepared["classes"]), ())
    predictor = Predictor(export_saved_model(model, meta, tmp_path / "model"))
    x, y = data_io.read_xy(prepared["paths"]["val"], meta.feature_names)
    accuracy = float(np.mean(predictor.predict_classes(x) == y))
    assert accuracy == pytest.approx(fit.val_accuracy, abs=0.005)
