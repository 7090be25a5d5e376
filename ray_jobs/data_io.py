"""Reading the Parquet splits that the prepare job writes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LABEL_INDEX = "__label_index"


def read_xy(path: str, feature_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Features as float32 [n, f] in ``feature_names`` order, and label ids as int32 [n]."""
    import pandas as pd

    frame = pd.read_parquet(path, columns=[*feature_names, LABEL_INDEX])
    return (
        frame[list(feature_names)].to_numpy(dtype="float32"),
        frame[LABEL_INDEX].to_numpy(dtype="int32"),
    )
