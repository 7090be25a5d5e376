"""Spark job: read the data, check its schema, index labels, split, write Parquet + profile.

``run_prepare(spark, ...)`` takes any SparkSession (``local[*]`` or a cluster master), so the
operator can run it in client mode and ``spark-submit`` can run ``main()`` the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

BUILTIN_DIGITS = "sklearn:digits"
LABEL_INDEX = "__label_index"
PROFILE_FILE = "profile.json"
SPLITS = ("train", "val", "test")
SPLIT_COLUMN = "__split"
MAX_CLASSES = 1000


class DataError(ValueError):
    """The data cannot be used as given; the message names the problem and the fix."""


def materialize_builtin(source: str, cache_dir: Path) -> str:
    """Write scikit-learn's bundled digits (1797 x 64) to CSV once; return its path."""
    if source != BUILTIN_DIGITS:
        raise DataError(f"unknown built-in data set {source!r}: the only one is {BUILTIN_DIGITS}")
    path = cache_dir / "digits.csv"
    if not path.exists():
        from sklearn.datasets import load_digits

        frame = load_digits(as_frame=True).frame.rename(columns={"target": "label"})
        frame.columns = [c.replace("pixel_", "px") for c in frame.columns]
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return str(path)


def resolve_source(source: str, cache_dir: Path) -> str:
    if source.startswith("sklearn:"):
        return materialize_builtin(source, cache_dir)
    local = source[len("file://") :] if source.startswith("file://") else source
    if "://" not in local and not Path(local).exists():
        raise DataError(
            f"data_source {source!r} does not exist: give the path of a readable .csv or "
            f".parquet file (absolute, or a URI like s3://bucket/key), or {BUILTIN_DIGITS}"
        )
    return source


def _read(spark: Any, path: str) -> Any:
    lowered = path.lower().rstrip("/")
    if lowered.endswith(".csv"):
        return spark.read.csv(path, header=True, inferSchema=True)
    if lowered.endswith(".parquet") or lowered.endswith(".pq") or Path(path).is_dir():
        return spark.read.parquet(path)
    raise DataError(f"data_source {path!r}: unknown format; use a .csv or .parquet path")


def _repair_malformed(
    frame: Any, non_numeric: list[Any]
) -> tuple[Any, dict[str, int], int, list[Any]]:
    """Numeric columns with a few unparsable cells ("n/a", "12,5", "oops").

    A CSV column with one bad cell is inferred as a string column. Where at least half of its
    non-empty cells parse as numbers, the column is numeric with malformed cells: those cells
    are counted per column and their rows dropped (and reported, never silently). Columns that
    stay non-numeric are returned for the caller's error. Returns the frame (repaired columns
    as double, malformed rows removed), the per-column counts, the malformed row count and the
    truly non-numeric columns.
    """
    from pyspark.sql import functions as F

    if not non_numeric:
        return frame, {}, 0, []
    names = [f.name for f in non_numeric]
    counts = frame.select(
        *[F.count(F.col(n)).alias(f"n{i}") for i, n in enumerate(names)],
        *[F.count(F.col(n).try_cast("double")).alias(f"ok{i}") for i, n in enumerate(names)],
    ).first()
    repair = [
        (i, n)
        for i, n in enumerate(names)
        if counts[f"n{i}"] and counts[f"ok{i}"] * 2 >= counts[f"n{i}"]
    ]
    if not repair:
        return frame, {}, 0, non_numeric
    malformed = {n: int(counts[f"n{i}"] - counts[f"ok{i}"]) for i, n in repair}
    conds = [F.col(n).isNotNull() & F.col(n).try_cast("double").isNull() for _, n in repair]
    is_bad = conds[0]
    for cond in conds[1:]:
        is_bad = is_bad | cond
    malformed_rows = frame.where(is_bad).count()
    clean = frame.where(~is_bad)
    for _, n in repair:
        clean = clean.withColumn(n, F.col(n).try_cast("double"))
    fixed = {n for _, n in repair}
    return clean, malformed, int(malformed_rows), [f for f in non_numeric if f.name not in fixed]


def run_prepare(
    spark: Any,
    *,
    source: str,
    label_column: str,
    output_dir: str,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    cache_dir: Path,
) -> dict[str, Any]:
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType

    frame = _read(spark, resolve_source(source, cache_dir))
    columns = frame.columns
    if label_column not in columns:
        raise DataError(
            f"label_column {label_column!r} is not in the data (columns: "
            f"{', '.join(columns[:20])}{' ...' if len(columns) > 20 else ''}): set "
            f"label_column to the column that holds the class label"
        )
    features = [c for c in columns if c != label_column]
    if not features:
        raise DataError("the data has no feature columns besides the label")
    bad = [
        f
        for f in frame.schema.fields
        if f.name in features and not isinstance(f.dataType, NumericType)
    ]
    frame, malformed, malformed_rows, bad = _repair_malformed(frame, bad)
    if bad:
        first = bad[0].name
        sample = frame.where(F.col(first).isNotNull()).select(first).first()
        raise DataError(
            f"feature column {first!r} is {bad[0].dataType.simpleString()} "
            f"(e.g. {None if sample is None else sample[0]!r}), but features must be numeric: "
            f"encode or drop {', '.join(repr(b.name) for b in bad)} before training"
        )
    # Few Spark jobs, since each costs a scheduling round trip (and the first ones of a fresh
    # JVM much more): one pass counts rows and complete rows, one collects the classes, one
    # counts rows per split and label on a cached frame that carries its split, one takes the
    # training statistics, and the three writes read from the cache.
    complete_row = F.lit(True)
    for c in (label_column, *features):
        complete_row = complete_row & F.col(c).isNotNull()
    row_counts = frame.agg(
        F.count(F.lit(1)).alias("n"), F.sum(F.when(complete_row, 1).otherwise(0)).alias("kept")
    ).first()
    total, kept = int(row_counts["n"]), int(row_counts["kept"] or 0)
    if kept == 0:
        raise DataError(
            f"no complete rows: all {total + malformed_rows} rows have a missing or malformed value"
        )
    complete = frame.where(complete_row)
    classes = sorted(
        r[0] for r in complete.select(label_column).distinct().limit(MAX_CLASSES + 1).collect()
    )
    if len(classes) > MAX_CLASSES:
        raise DataError(
            f"label_column {label_column!r} has over {MAX_CLASSES} distinct values: "
            f"a classification label is expected"
        )
    if len(classes) < 2:
        raise DataError(
            f"label_column {label_column!r} has {len(classes)} class(es): "
            f"need at least 2 to train a classifier"
        )
    mapping = F.create_map(*[x for i, c in enumerate(classes) for x in (F.lit(c), F.lit(i))])
    train_fraction = 1.0 - validation_fraction - test_fraction
    u = F.col(SPLIT_COLUMN + "_u")  # one draw per row, then compared twice
    split = (
        F.when(u < train_fraction, SPLITS[0])
        .when(u < train_fraction + validation_fraction, SPLITS[1])
        .otherwise(SPLITS[2])
    )
    labeled = (
        complete.select(
            *[F.col(f).cast("float").alias(f) for f in features],
            mapping[F.col(label_column)].cast("int").alias(LABEL_INDEX),
            F.rand(seed).alias(SPLIT_COLUMN + "_u"),
        )
        .withColumn(SPLIT_COLUMN, split)
        .drop(SPLIT_COLUMN + "_u")
        .cache()
    )
    counts = dict.fromkeys(SPLITS, 0)
    label_counts: dict[Any, int] = {}
    for row in labeled.groupBy(SPLIT_COLUMN, LABEL_INDEX).count().collect():
        counts[row[SPLIT_COLUMN]] += int(row["count"])
        if row[SPLIT_COLUMN] == SPLITS[0]:
            label_counts[classes[row[LABEL_INDEX]]] = int(row["count"])
    if min(counts.values()) == 0:
        labeled.unpersist()
        raise DataError(
            f"a split is empty ({counts}) with {kept} rows: use more data or "
            f"larger validation_fraction/test_fraction"
        )
    train = labeled.where(F.col(SPLIT_COLUMN) == SPLITS[0])
    stats = train.agg(
        *[F.mean(f).alias(f"m_{i}") for i, f in enumerate(features)],
        *[F.stddev_pop(f).alias(f"s_{i}") for i, f in enumerate(features)],
        *[F.min(f).alias(f"lo_{i}") for i, f in enumerate(features)],
        *[F.max(f).alias(f"hi_{i}") for i, f in enumerate(features)],
    ).first()
    for name in SPLITS:
        (
            labeled.where(F.col(SPLIT_COLUMN) == name)
            .drop(SPLIT_COLUMN)
            .write.mode("overwrite")
            .parquet(f"{output_dir.rstrip('/')}/{name}")
        )
    labeled.unpersist()
    profile = {
        "source": source,
        "label_column": label_column,
        "feature_names": features,
        "classes": [_jsonable(c) for c in classes],
        "rows_read": total + malformed_rows,
        "rows_dropped_incomplete": total - kept,
        "rows_dropped_malformed": malformed_rows,
        "malformed_values_by_column": malformed,
        "split_counts": counts,
        "feature_mean": [float(stats[f"m_{i}"] or 0.0) for i in range(len(features))],
        "feature_std": [float(stats[f"s_{i}"] or 0.0) for i in range(len(features))],
        "feature_min": [float(stats[f"lo_{i}"]) for i in range(len(features))],
        "feature_max": [float(stats[f"hi_{i}"]) for i in range(len(features))],
        "train_label_counts": {str(k): v for k, v in sorted(label_counts.items())},
        "paths": {name: f"{output_dir.rstrip('/')}/{name}" for name in SPLITS},
    }
    _write_text(f"{output_dir.rstrip('/')}/{PROFILE_FILE}", json.dumps(profile, indent=2))
    return profile


def source_fingerprint(source: str) -> str | None:
    """What identifies the content of ``source`` cheaply: the built-in data set's name, a
    local file's size and modification time, a local folder's files' names, sizes and times;
    None for a remote URI (no cheap fingerprint: it is prepared every time)."""
    import hashlib

    if source.startswith("sklearn:"):
        return source
    local = Path(source[len("file://") :] if source.startswith("file://") else source)
    if "://" in str(local) or not local.exists():
        return None
    if local.is_file():
        st = local.stat()
        return f"{local.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    digest = hashlib.sha256(str(local.resolve()).encode())
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        st = file.stat()
        digest.update(f"{file.relative_to(local)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def reuse_key(
    *, source: str, label_column: str, validation_fraction: float, test_fraction: float, seed: int
) -> str | None:
    """The key under which prepared splits of the same content, label, fractions and seed,
    by this version of this job, are reused; None when the source has no fingerprint."""
    import hashlib

    fingerprint = source_fingerprint(source)
    if fingerprint is None:
        return None
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    blob = json.dumps([fingerprint, label_column, validation_fraction, test_fraction, seed, code])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def find_prepared(data_dir: str, key: str) -> dict[str, Any] | None:
    """The profile of splits prepared before under ``key``, if they are all still there."""
    import pyarrow.fs as pafs

    index = f"{data_dir.rstrip('/')}/prepared/{key}.json"
    fs, path = (
        pafs.FileSystem.from_uri(index) if "://" in index else (pafs.LocalFileSystem(), index)
    )
    try:
        with fs.open_input_stream(path) as fh:
            profile: dict[str, Any] = json.loads(fh.read())
    except (FileNotFoundError, OSError, ValueError):
        return None
    for split_path in profile["paths"].values():
        sfs, spath = (
            pafs.FileSystem.from_uri(split_path)
            if "://" in split_path
            else (pafs.LocalFileSystem(), split_path)
        )
        if sfs.get_file_info(spath).type == pafs.FileType.NotFound:
            return None
    return profile


def record_prepared(data_dir: str, key: str, profile: dict[str, Any]) -> None:
    _write_text(f"{data_dir.rstrip('/')}/prepared/{key}.json", json.dumps(profile))


def _jsonable(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _write_text(uri: str, text: str) -> None:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(text.encode())


def main() -> None:  # pragma: no cover - spark-submit entrypoint
    """``spark-submit spark_jobs/prepare.py`` with the spec as JSON in SLAFLOW_JOB_SPEC."""
    from pyspark.sql import SparkSession

    spec = json.loads(os.environ["SLAFLOW_JOB_SPEC"])
    spark = SparkSession.builder.appName("slaflow-prepare").getOrCreate()
    spec["cache_dir"] = Path(spec["cache_dir"])
    print(json.dumps(run_prepare(spark, **spec)))


if __name__ == "__main__":  # pragma: no cover
    main()
