"""The prepare job on a real Spark session (local[*])."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from spark_jobs.prepare import LABEL_INDEX, DataError, run_prepare

pytestmark = [pytest.mark.integration, pytest.mark.quick]


def test_digits_are_split_profiled_and_written(prepared: dict[str, Any]) -> None:
    counts = prepared["split_counts"]
    assert sum(counts.values()) == prepared["rows_read"] == 1797
    assert 0.6 < counts["train"] / 1797 < 0.8
    assert prepared["classes"] == list(range(10))
    assert len(prepared["feature_names"]) == 64 == len(prepared["feature_mean"])
    train = pd.read_parquet(prepared["paths"]["train"])
    assert len(train) == counts["train"]
    assert set(train[LABEL_INDEX].unique()) == set(range(10))
    written = json.loads((Path(prepared["paths"]["train"]).parent / "profile.json").read_text())
    assert written["split_counts"] == counts


def _prepare(
    spark: Any,
    tmp_path: Path,
    source: str,
    label: str = "label",
    fractions: tuple[float, float] = (0.2, 0.2),
    **options: Any,
) -> dict[str, Any]:
    return run_prepare(
        spark,
        source=source,
        label_column=label,
        output_dir=str(tmp_path / "out"),
        validation_fraction=fractions[0],
        test_fraction=fractions[1],
        seed=1,
        cache_dir=tmp_path,
        options=options,
    )


def _csv(tmp_path: Path, frame: pd.DataFrame) -> str:
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return str(path)


def test_missing_file_says_what_to_give(spark: Any, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist: give the path of a readable \.csv"):
        _prepare(spark, tmp_path, str(tmp_path / "nope.csv"))


def test_missing_label_column_is_named(spark: Any, tmp_path: Path) -> None:
    src = _csv(tmp_path, pd.DataFrame({"a": range(30), "y": [0, 1] * 15}))
    with pytest.raises(DataError, match=r"label_column 'label' is not in the data \(columns: a, y"):
        _prepare(spark, tmp_path, src)


def test_text_columns_become_categories_with_the_training_vocabulary(
    spark: Any, tmp_path: Path
) -> None:
    n = 60
    frame = pd.DataFrame(
        {
            "id": range(n),
            "home city": (["paris"] * 3 + ["rome"] * 2 + ["oslo"]) * (n // 6),
            "size.cm": [float(i % 7) for i in range(n)],
            "label": ["cat", "dog"] * (n // 2),
        }
    )
    profile = _prepare(spark, tmp_path, _csv(tmp_path, frame), drop_columns=["id"])
    assert profile["task"] == "classification" and profile["classes"] == ["cat", "dog"]
    assert profile["input_columns"] == ["home city", "size.cm"]  # id dropped, order kept
    assert profile["categorical_columns"] == ["home city"]
    column = profile["encoding"]["columns"][0]
    assert column["vocab"] == ["paris", "rome", "oslo"]  # most frequent first
    assert profile["feature_names"] == [
        "home city=paris",
        "home city=rome",
        "home city=oslo",
        "home city=<oov>",
        "size.cm",
    ]
    assert len(profile["feature_mean"]) == 5 and 0.4 < profile["feature_mean"][0] < 0.6
    train = pd.read_parquet(profile["paths"]["train"])
    assert pd.api.types.is_string_dtype(train["home city"]) and "id" not in train.columns


def test_small_tables_keep_the_fractions_per_class(spark: Any, tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": range(50), "label": ["x"] * 25 + ["y"] * 25})
    profile = _prepare(spark, tmp_path, _csv(tmp_path, frame), fractions=(0.15, 0.15))
    assert profile["split"] == "stratified"
    assert profile["split_counts"] == {"train": 34, "val": 8, "test": 8}
    test = pd.read_parquet(profile["paths"]["test"])
    assert sorted(test[LABEL_INDEX].value_counts().tolist()) == [4, 4]


def test_large_tables_draw_each_row_once_and_keep_the_fractions(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spark_jobs import prepare

    # the per-row draw of tables over EXACT_SPLIT_MAX_ROWS, on a table this test can hold
    monkeypatch.setattr(prepare, "EXACT_SPLIT_MAX_ROWS", 100)
    n = 20_000
    frame = pd.DataFrame({"a": range(n), "label": ["x", "y"] * (n // 2)})
    profile = _prepare(spark, tmp_path, _csv(tmp_path, frame), fractions=(0.1, 0.2))
    counts = profile["split_counts"]
    assert sum(counts.values()) == n
    # within 5 standard deviations of the binomial draw (sd ~ 42-57 rows here)
    for name, fraction in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        sd = (n * fraction * (1 - fraction)) ** 0.5
        assert abs(counts[name] - n * fraction) < 5 * sd, counts
    written = pd.read_parquet(profile["paths"]["train"])
    assert "__slaflow_draw" not in written.columns and len(written) == counts["train"]


def test_a_few_whole_numbers_ask_for_the_task(spark: Any, tmp_path: Path) -> None:
    src = _csv(tmp_path, pd.DataFrame({"a": range(40), "label": [0, 1] * 20}))
    with pytest.raises(DataError, match="Set task to 'classification' or 'regression'"):
        _prepare(spark, tmp_path, src)
    assert _prepare(spark, tmp_path, src, task="regression")["task"] == "regression"


def test_time_split_tests_on_the_newest_rows(spark: Any, tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"day": list(range(100))[::-1], "a": range(100), "y": [0.5 * i for i in range(100)]}
    )
    profile = _prepare(
        spark, tmp_path, _csv(tmp_path, frame), label="y", split="time", time_column="day"
    )
    assert profile["task"] == "regression" and "day" not in profile["input_columns"]
    test = pd.read_parquet(profile["paths"]["test"])
    assert len(test) == 20 and test["a"].max() <= 19  # day = 99 - a: newest days, smallest a


def test_a_column_the_contract_names_must_exist(spark: Any, tmp_path: Path) -> None:
    src = _csv(tmp_path, pd.DataFrame({"a": range(30), "label": ["x", "y"] * 15}))
    with pytest.raises(DataError, match=r"feature_columns names 'nope'"):
        _prepare(spark, tmp_path, src, feature_columns=["nope"])


def test_incomplete_rows_are_counted_not_hidden(spark: Any, tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"a": [float(i) for i in range(60)], "b": [1.0] * 60, "label": ["x", "y"] * 30}
    )
    frame.loc[[3, 10, 11], "b"] = None
    profile = _prepare(spark, tmp_path, _csv(tmp_path, frame))
    assert profile["rows_read"] == 60
    assert profile["rows_dropped_incomplete"] == 3
    assert sum(profile["split_counts"].values()) == 57
    assert profile["classes"] == ["x", "y"]


def test_malformed_numbers_are_counted_per_column_and_their_rows_dropped(
    spark: Any, tmp_path: Path
) -> None:
    src = tmp_path / "malformed.csv"
    lines = ["a,b,label"] + [f"{i},{i % 7}.5,{'xy'[i % 2]}" for i in range(60)]
    lines[5] = "4,n/a,x"  # one unparsable cell
    lines[9] = "oops,12,x"  # another, in another column
    lines[12] = "11,?,y"  # a third
    lines[20] = "19,,y"  # empty: incomplete, not malformed
    src.write_text("\n".join(lines) + "\n")
    profile = _prepare(spark, tmp_path, str(src))
    assert profile["rows_read"] == 60
    assert profile["rows_dropped_malformed"] == 3
    assert profile["malformed_values_by_column"] == {"a": 1, "b": 2}
    assert profile["rows_dropped_incomplete"] == 1
    assert sum(profile["split_counts"].values()) == 56
    assert profile["feature_names"] == ["a", "b"]


def test_infinite_nan_and_float32_overflowing_cells_are_malformed(
    spark: Any, tmp_path: Path
) -> None:
    """Kept, "Infinity" or 1e39 would become inf in the float32 inputs and train to NaN."""
    src = tmp_path / "nonfinite.csv"
    lines = ["a,b,label"] + [f"{i},{i % 7}.5,{'xy'[i % 2]}" for i in range(60)]
    lines[3] = "2,Infinity,y"
    lines[7] = "1e39,3.5,x"  # a double, but no float32
    lines[8] = "7,NaN,x"
    lines[9] = "-1e39,-Infinity,y"  # two in one row: one row dropped
    src.write_text("\n".join(lines) + "\n")
    profile = _prepare(spark, tmp_path, str(src))
    assert profile["rows_read"] == 60
    assert profile["rows_dropped_malformed"] == 4
    assert profile["malformed_values_by_column"] == {"a": 2, "b": 3}
    assert sum(profile["split_counts"].values()) == 56
    assert all(abs(v) < 1e6 for v in profile["feature_mean"] + profile["feature_std"])


def test_rows_with_more_fields_than_the_header_are_counted_and_dropped(
    spark: Any, tmp_path: Path
) -> None:
    """Spark cuts a CSV row's extra fields silently; here such a row (an unquoted comma
    shifts the label) is counted and dropped, and the columns keep their inferred types."""
    src = tmp_path / "extra.csv"
    lines = ["a,b,label"] + [f"{i},{i % 7}.5,{'xy'[i % 2]}" for i in range(60)]
    lines[4] = "3,1,5,x"  # "1,5" meant as one decimal: four fields
    lines[30] = "29,2.5,y,trailing,more"
    src.write_text("\n".join(lines) + "\n")
    profile = _prepare(spark, tmp_path, str(src))
    assert profile["rows_read"] == 60
    assert profile["rows_dropped_extra_fields"] == 2
    assert profile["rows_dropped_malformed"] == 2
    assert sum(profile["split_counts"].values()) == 58
    assert profile["feature_names"] == ["a", "b"] and profile["classes"] == ["x", "y"]


def test_single_class_is_rejected(spark: Any, tmp_path: Path) -> None:
    src = _csv(tmp_path, pd.DataFrame({"a": range(30), "label": [1] * 30}))
    with pytest.raises(DataError, match="need at least 2"):
        _prepare(spark, tmp_path, src, task="classification")
