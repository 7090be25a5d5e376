"""From raw table rows to the model's input vector: one encoder for training, evaluation and
serving, so nothing is encoded twice in two ways (no train/serve skew).

The prepare job (Spark) computes the encoding from the training split: which columns are
numeric and which are categories, and each category column's vocabulary (most frequent
first, at most ``MAX_VOCAB``). The encoding travels in the data profile and in the exported
model's ``slaflow_model.json``, so a served model encodes requests with the vocabulary it was
trained with. A numeric column is one input; a category column is a one-hot block of its
vocabulary plus one out-of-vocabulary slot (unseen or missing values land there).
The model then standardises every input with the training statistics (its first layer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

NUMERIC = "numeric"
#: The largest magnitude a float32 input holds; beyond it a value would reach the model as inf.
F32_MAX = 3.4028234e38
CATEGORICAL = "categorical"
OOV = "<oov>"
#: Most categories kept per column; rarer ones share the out-of-vocabulary slot.
MAX_VOCAB = 256


class EncodingError(ValueError):
    """A row cannot be encoded; the message names the row, the column and what is expected."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    vocab: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return 1 if self.kind == NUMERIC else len(self.vocab) + 1

    @cached_property
    def index(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.vocab)}

    def encoded_names(self) -> list[str]:
        if self.kind == NUMERIC:
            return [self.name]
        return [f"{self.name}={v}" for v in self.vocab] + [f"{self.name}={OOV}"]


@dataclass(frozen=True)
class FeatureEncoder:
    columns: tuple[Column, ...]

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FeatureEncoder:
        return cls(
            tuple(
                Column(str(c["name"]), str(c["kind"]), tuple(c.get("vocab", ())))
                for c in raw["columns"]
            )
        )

    @classmethod
    def numeric(cls, names: Sequence[str]) -> FeatureEncoder:
        """All-numeric features (a v1 data profile or model): the identity encoding."""
        return cls(tuple(Column(n, NUMERIC) for n in names))

    @classmethod
    def of_profile(cls, profile: Mapping[str, Any]) -> FeatureEncoder:
        """The encoder of a data profile or model metadata (numeric when it names none)."""
        enc = profile.get("encoding")
        return cls.from_dict(enc) if enc else cls.numeric(profile["feature_names"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": [
                {"name": c.name, "kind": c.kind, **({"vocab": list(c.vocab)} if c.vocab else {})}
                for c in self.columns
            ]
        }

    @property
    def input_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def all_numeric(self) -> bool:
        return all(c.kind == NUMERIC for c in self.columns)

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns)

    def encoded_names(self) -> list[str]:
        return [n for c in self.columns for n in c.encoded_names()]

    def encode_frame(self, frame: Any) -> np.ndarray:
        """A pandas DataFrame of raw columns as float32 ``[rows, width]`` (vectorised)."""
        import pandas as pd

        if self.all_numeric:
            return frame[list(self.input_columns)].to_numpy(dtype="float32")
        out = np.zeros((len(frame), self.width), dtype="float32")
        at = 0
        for c in self.columns:
            if c.kind == NUMERIC:
                out[:, at] = frame[c.name].to_numpy(dtype="float32")
            else:
                index, oov = c.index, len(c.vocab)
                codes = (
                    pd.Series(frame[c.name], copy=False)
                    .map(lambda v, index=index, oov=oov: index.get(_category(v), oov))
                    .to_numpy(dtype="int64")
                )
                out[np.arange(len(frame)), at + codes] = 1.0
            at += c.width
        return out

    def encode_rows(self, rows: Sequence[Any]) -> np.ndarray:
        """Request rows (objects by column name, or lists in ``input_columns`` order) as
        float32 ``[rows, width]``; raises :class:`EncodingError` naming the first bad cell."""
        names = self.input_columns
        out = np.zeros((len(rows), self.width), dtype="float32")
        for i, row in enumerate(rows):
            if isinstance(row, Mapping):
                missing = [n for n in names if n not in row]
                if missing:
                    raise EncodingError(
                        f"instances[{i}] lacks feature(s) {missing[:5]}: give all "
                        f"{len(names)} features by name (or as a list in this order: "
                        f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''})"
                    )
                values = [row[n] for n in names]
            elif isinstance(row, list) and len(row) == len(names):
                values = row
            else:
                got = len(row) if isinstance(row, list) else type(row).__name__
                kind = "numbers" if self.all_numeric else "values"
                raise EncodingError(
                    f"instances[{i}] must be a list of {len(names)} {kind} (features "
                    f"{names[0]}..{names[-1]}) or an object of them by name, got {got}"
                )
            at = 0
            for j, (c, v) in enumerate(zip(self.columns, values, strict=True)):
                if c.kind == NUMERIC:
                    if isinstance(v, bool) or not isinstance(v, int | float):
                        raise EncodingError(
                            f"instances[{i}][{j}] ({c.name}) must be a finite number, got {v!r}"
                        )
                    try:
                        x = float(v)
                    except OverflowError:
                        x = math.inf
                    if not math.isfinite(x) or abs(x) > F32_MAX:
                        raise EncodingError(
                            f"instances[{i}][{j}] ({c.name}) must be a finite number within "
                            f"float32 range, got {v!r:.40}"
                        )
                    out[i, at] = x
                else:
                    if v is not None and not isinstance(v, str | int | float | bool):
                        raise EncodingError(
                            f"instances[{i}][{j}] ({c.name}) must be a text category, "
                            f"got {type(v).__name__}"
                        )
                    code = _index(c, v)
                    out[i, at + code] = 1.0
                at += c.width
        return out

    def encoded_stats(
        self,
        numeric_mean: Mapping[str, float],
        numeric_std: Mapping[str, float],
        frequencies: Mapping[str, Sequence[float]],
    ) -> tuple[list[float], list[float]]:
        """Mean and standard deviation of every encoded input over the training split:
        numeric columns from Spark's statistics, a one-hot slot with share ``p`` of the rows
        has mean ``p`` and deviation ``sqrt(p (1 - p))``."""
        mean: list[float] = []
        std: list[float] = []
        for c in self.columns:
            if c.kind == NUMERIC:
                mean.append(float(numeric_mean[c.name]))
                std.append(float(numeric_std[c.name]))
            else:
                for p in frequencies[c.name]:
                    mean.append(float(p))
                    std.append(math.sqrt(max(p * (1 - p), 0.0)))
        return mean, std


def _category(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"  # as Spark writes a boolean column as text
    return str(value)


def _index(column: Column, value: Any) -> int:
    cat = _category(value)
    return len(column.vocab) if cat is None else column.index.get(cat, len(column.vocab))
