"""MLflow pyfunc flavour of a slaflow model, so ``mlflow.pyfunc.load_model(uri)`` works.

It lives with the model format it wraps (not in ``mlflow_config``, which handles tracking
and the registry and imports nothing of ``ray_jobs``)."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc

from ray_jobs.model_format import find_model_dir, open_predictor


class SlaflowPyfunc(mlflow.pyfunc.PythonModel):
    """Wraps the exported SavedModel; ``predict`` takes a DataFrame of the feature columns."""

    def load_context(self, context: Any) -> None:
        self._predictor = open_predictor(find_model_dir(context.artifacts["model_dir"]))

    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        import pandas as pd

        md = self._predictor.metadata
        frame = pd.DataFrame(model_input)
        encoder = md.encoder()
        if set(encoder.input_columns) <= set(frame.columns):
            x = encoder.encode_frame(frame)  # raw columns by name, text included
        else:
            x = frame.to_numpy(dtype="float32")  # already the model's inputs, in order
        proba = self._predictor.predict_proba(x)
        if md.regression:
            return pd.DataFrame({"prediction": proba[:, 0]})
        return pd.DataFrame(
            {
                "prediction": [md.classes[i] for i in proba.argmax(axis=1)],
                "confidence": proba.max(axis=1),
            }
        )
