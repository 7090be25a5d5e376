"""Reading the Parquet splits that the prepare job writes, encoded for the model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ray_jobs.features import FeatureEncoder

LABEL_INDEX = "__label_index"
LABEL_VALUE = "__label_value"


def label_name(profile: Mapping[str, Any]) -> str:
    """The split's label column: class ids (classification) or values (regression)."""
    return str(profile.get("label_name", LABEL_INDEX))


def read_xy(path: str, profile: Mapping[str, Any] | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encoded features float32 ``[n, inputs]`` and labels: int32 class ids, or float32
    values for regression. ``profile``: the data profile or the model's metadata (as a
    dict), or just the names of all-numeric feature columns."""
    import pandas as pd

    if not isinstance(profile, Mapping):
        profile = {"feature_names": list(profile)}
    encoder = FeatureEncoder.of_profile(profile)
    label = label_name(profile)
    frame = pd.read_parquet(path, columns=[*encoder.input_columns, label])
    y = frame[label].to_numpy(dtype="int32" if label == LABEL_INDEX else "float32")
    return encoder.encode_frame(frame), y


def read_request_rows(
    path: str, profile: Mapping[str, Any], limit: int | None = None
) -> tuple[list[Any], np.ndarray]:
    """Rows of a split as a client sends them to the endpoint (lists of numbers for an
    all-numeric table, objects by column name with text as text otherwise), and their labels."""
    import pandas as pd

    encoder = FeatureEncoder.of_profile(profile)
    label = label_name(profile)
    frame = pd.read_parquet(path, columns=[*encoder.input_columns, label])
    if limit is not None:
        frame = frame.head(limit)
    y = frame[label].to_numpy(dtype="int32" if label == LABEL_INDEX else "float32")
    if encoder.all_numeric:
        return encoder.encode_frame(frame).tolist(), y
    cols = list(encoder.input_columns)
    records = frame[cols].astype(object).where(frame[cols].notna(), None).to_dict("records")
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in records], y
