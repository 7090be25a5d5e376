"""Spark job: read the data, check its schema, index labels, split, write Parquet + profile.

``run_prepare(spark, ...)`` takes any SparkSession (``local[*]`` or a cluster master), so the
operator can run it in client mode and ``spark-submit`` can run ``main()`` the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from spark_jobs.prepared import PROFILE_FILE, write_text

BUILTIN_DIGITS = "sklearn:digits"
LABEL_INDEX = "__label_index"
LABEL_VALUE = "__label_value"
SPLITS = ("train", "val", "test")
SPLIT_COLUMN = "__split"
MAX_CLASSES = 1000


class DataError(ValueError):
    """The data cannot be used as given; the message names the problem and the fix."""


#: The bundled data sets and their tasks (a numeric label of a few values is ambiguous in
#: general; for these it is known).
BUILTINS = {
    "sklearn:digits": "classification",
    "sklearn:diabetes": "regression",
    "sklearn:breast_cancer": "classification",
    "slaflow:tickets": "classification",
}


def _builtin_frame(source: str) -> Any:
    """The bundled data sets: scikit-learn's digits (1797 x 64, 10 classes), diabetes (442 x
    10, a quantity), breast cancer (569 x 30, 2 classes), and a generated support-ticket table
    with text columns, string labels and column names with spaces and dots."""
    if source == "sklearn:digits":
        from sklearn.datasets import load_digits

        frame = load_digits(as_frame=True).frame.rename(columns={"target": "label"})
        frame.columns = [c.replace("pixel_", "px") for c in frame.columns]
        return frame
    if source == "sklearn:diabetes":
        from sklearn.datasets import load_diabetes

        return load_diabetes(as_frame=True, scaled=False).frame.rename(
            columns={"target": "progression"}
        )
    if source == "sklearn:breast_cancer":
        from sklearn.datasets import load_breast_cancer

        frame = load_breast_cancer(as_frame=True).frame
        frame.columns = [c.replace(" ", "_") for c in frame.columns]
        return frame.rename(columns={"target": "malignant"})
    return tickets_frame()


def tickets_frame(rows: int = 3000, seed: int = 7) -> Any:
    """A support-ticket table: which team handles a ticket, from its channel, product, plan,
    the customer's country and two numbers. The team follows the product and channel (with
    noise), so a model can learn it only from the text columns."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    products = ["billing", "mobile app", "web app", "api", "data export", "sso"]
    channels = ["email", "chat", "phone", "web form"]
    plans = ["free", "pro", "enterprise"]
    countries = ["de", "fr", "us", "in", "br", "jp", "ng", "mx"]
    team_of = {
        "billing": "finance",
        "mobile app": "apps",
        "web app": "apps",
        "api": "platform",
        "data export": "platform",
        "sso": "identity",
    }
    product = rng.choice(products, rows)
    channel = rng.choice(channels, rows, p=[0.4, 0.3, 0.1, 0.2])
    plan = rng.choice(plans, rows, p=[0.5, 0.35, 0.15])
    team = np.array([team_of[p] for p in product], dtype=object)
    escalate = (plan == "enterprise") & (channel == "phone")
    team[escalate] = "escalations"
    noise = rng.random(rows) < 0.05
    team[noise] = rng.choice(sorted(set(team_of.values())), int(noise.sum()))
    return pd.DataFrame(
        {
            "ticket id": np.arange(rows),
            "channel": channel,
            "product.area": product,
            "plan": plan,
            "country": rng.choice(countries, rows),
            "words": rng.poisson(60, rows),
            "account age (days)": rng.integers(1, 2000, rows),
            "team": team,
        }
    )


def materialize_builtin(source: str, cache_dir: Path) -> str:
    """Write a bundled data set to CSV once; return its path."""
    if source not in BUILTINS:
        raise DataError(
            f"unknown built-in data set {source!r}: use one of {', '.join(BUILTINS)}, or a "
            f".csv / .parquet path"
        )
    path = cache_dir / f"{source.split(':', 1)[1]}.csv"
    if not path.exists():
        frame = _builtin_frame(source)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return str(path)


def resolve_source(source: str, cache_dir: Path) -> str:
    if source.startswith(("sklearn:", "slaflow:")):
        return materialize_builtin(source, cache_dir)
    local = source[len("file://") :] if source.startswith("file://") else source
    if "://" not in local and not Path(local).exists():
        raise DataError(
            f"data_source {source!r} does not exist: give the path of a readable .csv or "
            f".parquet file (absolute, or a URI like s3://bucket/key), or {BUILTIN_DIGITS}"
        )
    return source


#: A CSV row with more fields than its header fills this column (Spark would drop them).
EXTRA_FIELDS_COLUMN = "__slaflow_extra_fields"


def _read(spark: Any, path: str) -> Any:
    """The table. A CSV gets one more (string) column than its header names, so a row with
    more fields than the header is seen (``EXTRA_FIELDS_COLUMN`` not null) instead of cut
    silently: the schema is the inferred one plus that column, applied by position."""
    from pyspark.sql.types import StringType, StructField, StructType

    lowered = path.lower().rstrip("/")
    if lowered.endswith(".csv"):
        inferred = spark.read.csv(path, header=True, inferSchema=True).schema
        if EXTRA_FIELDS_COLUMN in inferred.fieldNames():
            raise DataError(f"data_source {path!r}: rename the column {EXTRA_FIELDS_COLUMN!r}")
        schema = StructType([*inferred.fields, StructField(EXTRA_FIELDS_COLUMN, StringType())])
        return spark.read.csv(path, header=True, schema=schema, enforceSchema=True)
    if lowered.endswith(".parquet") or lowered.endswith(".pq") or Path(path).is_dir():
        return spark.read.parquet(path)
    raise DataError(f"data_source {path!r}: unknown format; use a .csv or .parquet path")


#: Largest float32: the models take float32 inputs, so a larger cell would become infinity.
FLOAT32_MAX = 3.4028234663852886e38


def _drop_nonfinite(frame: Any, columns: list[str]) -> tuple[Any, dict[str, int], int]:
    """Cells that are NaN, infinite or beyond float32 ("Infinity", "NaN", 1e39) in floating
    columns are malformed like an unparsable cell: counted per column, their rows dropped.
    Kept, they would train to NaN. One aggregate over a flat ``greatest`` (a chain of ORs over
    a wide table overflows the JVM stack)."""
    from pyspark.sql import functions as F

    if not columns:
        return frame, {}, 0
    bad = [
        F.coalesce(F.isnan(_c(n)) | (F.abs(_c(n)) > F.lit(FLOAT32_MAX)), F.lit(False)).cast("int")
        for n in columns
    ]
    any_bad = bad[0] if len(bad) == 1 else F.greatest(*bad)
    sums = frame.select(
        *[F.sum(b).alias(f"b{i}") for i, b in enumerate(bad)], F.sum(any_bad).alias("rows")
    ).first()
    counts = {n: int(sums[f"b{i}"] or 0) for i, n in enumerate(columns)}
    rows = int(sums["rows"] or 0)
    if not rows:
        return frame, {}, 0
    return frame.where(any_bad == 0), {n: k for n, k in counts.items() if k}, rows


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
        *[F.count(_c(n)).alias(f"n{i}") for i, n in enumerate(names)],
        *[F.count(_c(n).try_cast("double")).alias(f"ok{i}") for i, n in enumerate(names)],
    ).first()
    repair = [
        (i, n)
        for i, n in enumerate(names)
        if counts[f"n{i}"] and counts[f"ok{i}"] * 2 >= counts[f"n{i}"]
    ]
    if not repair:
        return frame, {}, 0, non_numeric
    malformed = {n: int(counts[f"n{i}"] - counts[f"ok{i}"]) for i, n in repair}
    conds = [_c(n).isNotNull() & _c(n).try_cast("double").isNull() for _, n in repair]
    is_bad = conds[0]
    for cond in conds[1:]:
        is_bad = is_bad | cond
    malformed_rows = frame.where(is_bad).count()
    clean = frame.where(~is_bad)
    for _, n in repair:
        clean = clean.withColumn(n, _c(n).try_cast("double"))
    fixed = {n for _, n in repair}
    return clean, malformed, int(malformed_rows), [f for f in non_numeric if f.name not in fixed]


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _c(name: str) -> Any:
    """A column by its exact name: dots and spaces in names are not struct paths."""
    from pyspark.sql import functions as F

    return F.col(_quoted(name))


#: Splits are exact (row positions after a seeded shuffle) up to this many rows; above it, a
#: seeded uniform draw per row (fractions held within sampling noise, no global sort).
EXACT_SPLIT_MAX_ROWS = 2_000_000
DRAW_COLUMN = "__slaflow_draw"


def _check_columns(columns: list[str], options: dict[str, Any], label_column: str) -> list[str]:
    """The feature columns, after checking every column the contract names exists."""

    def missing(field: str, names: list[str]) -> None:
        absent = [n for n in names if n not in columns]
        if absent:
            raise DataError(
                f"{field} names {absent[0]!r}, which is not a column of the data (columns: "
                f"{', '.join(columns[:20])}{' ...' if len(columns) > 20 else ''}): fix the name "
                f"or remove it from {field}"
            )

    if label_column not in columns:
        raise DataError(
            f"label_column {label_column!r} is not in the data (columns: "
            f"{', '.join(columns[:20])}{' ...' if len(columns) > 20 else ''}): set "
            f"label_column to the column that holds the label"
        )
    missing("feature_columns", list(options.get("feature_columns") or []))
    missing("drop_columns", list(options.get("drop_columns") or []))
    time_column = options.get("time_column") or ""
    if time_column:
        missing("time_column", [time_column])
    dropped = {label_column, time_column, *(options.get("drop_columns") or [])}
    features = list(options.get("feature_columns") or []) or [
        c for c in columns if c not in dropped
    ]
    if not features:
        raise DataError(
            "no feature columns are left besides the label (check drop_columns / time_column)"
        )
    return features


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
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read, type and split the table; compute the feature encoding on the training split.

    ``options`` (contract v2's data fields): ``task`` (auto|classification|regression),
    ``feature_columns``, ``drop_columns``, ``split`` (auto|stratified|random|time),
    ``time_column``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType, DoubleType, FloatType, NumericType, StringType

    from policies import CLASSIFICATION, REGRESSION, infer_task
    from ray_jobs.features import CATEGORICAL, MAX_VOCAB, NUMERIC, Column, FeatureEncoder

    options = dict(options or {})
    frame = _read(spark, resolve_source(source, cache_dir))
    extra_rows = 0
    if EXTRA_FIELDS_COLUMN in frame.columns:  # a CSV: rows with more fields than the header
        extra = _c(EXTRA_FIELDS_COLUMN).isNotNull()
        extra_rows = int(frame.agg(F.sum(extra.cast("int")).alias("n")).first()["n"] or 0)
        frame = frame.where(~extra) if extra_rows else frame
        frame = frame.drop(EXTRA_FIELDS_COLUMN)
    columns = frame.columns
    features = _check_columns(columns, options, label_column)
    types = {f.name: f.dataType for f in frame.schema.fields}
    unusable = [
        f for f in features if not isinstance(types[f], NumericType | StringType | BooleanType)
    ]
    if unusable:
        raise DataError(
            f"feature column {unusable[0]!r} is {types[unusable[0]].simpleString()}: numbers "
            f"and text are features; leave it out with drop_columns (or name it as time_column "
            f"with split 'time')"
        )
    text = [frame.schema[f] for f in features if not isinstance(types[f], NumericType)]
    # A text column whose cells mostly parse as numbers is a numeric column with a few
    # malformed cells (their rows are dropped and counted); the rest are categories.
    frame, malformed, malformed_rows, categorical_fields = _repair_malformed(
        frame, [f for f in text if isinstance(f.dataType, StringType)]
    )
    categorical = [f.name for f in categorical_fields] + [
        f.name for f in text if isinstance(f.dataType, BooleanType)
    ]
    numeric = [f for f in features if f not in categorical]
    floating = [
        n
        for n in [label_column, *numeric]
        if isinstance(frame.schema[n].dataType, FloatType | DoubleType)
    ]
    frame, nonfinite, nonfinite_rows = _drop_nonfinite(frame, floating)
    for name, count in nonfinite.items():
        malformed[name] = malformed.get(name, 0) + count
    malformed_rows += nonfinite_rows + extra_rows
    label_type = frame.schema[label_column].dataType

    # Complete rows: Spark's own null drop (one flat AtLeastNNonNulls expression). A
    # conjunction of one null check per column, even balanced, is rebuilt left-deep by the
    # optimizer and overflowed the JVM stack on a 2,000-column table.
    # (Names quoted: unquoted, Spark reads "a.b" as a nested field.)
    complete = frame.dropna(how="any", subset=[_quoted(n) for n in [label_column, *numeric]])
    row_counts = frame.agg(F.count(F.lit(1)).alias("n")).first()
    total, kept = int(row_counts["n"]), complete.count()
    if kept == 0:
        raise DataError(
            f"no complete rows: all {total + malformed_rows} rows have a missing or malformed "
            f"label or numeric value"
        )
    distinct = [
        r[0] for r in complete.select(label_column).distinct().limit(MAX_CLASSES + 1).collect()
    ]
    label_numeric = isinstance(label_type, NumericType)
    task = options.get("task") or "auto"
    if task == "auto" and source in BUILTINS:
        task = BUILTINS[source]
    if task == "auto":
        inferred = infer_task(distinct, label_numeric, kept)
        if inferred.task is None:
            raise DataError(
                f"label_column {label_column!r}: {inferred.reason}. Set task to "
                f"'classification' or 'regression' in the contract"
            )
        task = inferred.task
    if task == REGRESSION and not label_numeric:
        raise DataError(
            f"label_column {label_column!r} holds text ({label_type.simpleString()}) and task is "
            f"'regression': a regression label must be numeric; use task 'classification'"
        )
    classes: list[Any] = []
    if task == CLASSIFICATION:
        if len(distinct) > MAX_CLASSES:
            raise DataError(
                f"label_column {label_column!r} has over {MAX_CLASSES} distinct values: too "
                f"many classes; if it is a quantity, set task to 'regression'"
            )
        if len(distinct) < 2:
            raise DataError(
                f"label_column {label_column!r} has {len(distinct)} class(es): need at least 2 "
                f"to train a classifier"
            )
        classes = sorted(distinct)
    split_method = options.get("split") or "auto"
    if split_method == "auto":
        split_method = "stratified" if task == CLASSIFICATION else "random"
    if split_method == "stratified" and task != CLASSIFICATION:
        raise DataError("split 'stratified' needs a classification label: use 'random'")

    # Split by position: a seeded shuffle (or the time column) orders the rows, and the
    # fractions are taken as exact counts, per class when stratified. Above
    # EXACT_SPLIT_MAX_ROWS a uniform draw per row avoids a global sort.
    u = F.rand(seed)
    if split_method == "time":
        order = [_c(options["time_column"]).asc_nulls_first(), u]
    else:
        order = [u]
    train_fraction = 1.0 - validation_fraction - test_fraction
    if kept > EXACT_SPLIT_MAX_ROWS and split_method != "time":
        # The draw is a column, computed once per row: a ``rand`` written into each branch
        # of the CASE would be a second generator, drawn only for the rows the first branch
        # let through (5M rows at 0.05/0.05 gave val 9.5% and test 0.5%).
        complete = complete.withColumn(DRAW_COLUMN, F.rand(seed))
        draw = F.col(DRAW_COLUMN)
        split = (
            F.when(draw < train_fraction, SPLITS[0])
            .when(draw < train_fraction + validation_fraction, SPLITS[1])
            .otherwise(SPLITS[2])
        )
    else:
        group = [_c(label_column)] if split_method == "stratified" else []
        window = Window.partitionBy(*group).orderBy(*order)
        position = F.row_number().over(window) - 1
        size = F.count(F.lit(1)).over(Window.partitionBy(*group))
        n_test = F.greatest(F.lit(1), F.round(size * test_fraction))
        n_val = F.greatest(F.lit(1), F.round(size * validation_fraction))
        if split_method == "stratified":  # a class too small for three splits trains
            n_test = F.when(size >= 3, n_test).otherwise(0)
            n_val = F.when(size >= 3, n_val).otherwise(0)
        split = (
            F.when(position >= size - n_test, SPLITS[2])
            .when(position >= size - n_test - n_val, SPLITS[1])
            .otherwise(SPLITS[0])
        )
    if task == CLASSIFICATION:
        mapping = F.create_map(*[x for i, c in enumerate(classes) for x in (F.lit(c), F.lit(i))])
        label_out = mapping[_c(label_column)].cast("int").alias(LABEL_INDEX)
    else:
        label_out = _c(label_column).cast("double").alias(LABEL_VALUE)
    labeled = (
        complete.withColumn(SPLIT_COLUMN, split)
        .select(
            *[_c(f).cast("float").alias(f) for f in numeric],
            *[_c(f).cast("string").alias(f) for f in categorical],
            label_out,
            _c(SPLIT_COLUMN),
        )
        .cache()
    )
    label_name = LABEL_INDEX if task == CLASSIFICATION else LABEL_VALUE
    counts = dict.fromkeys(SPLITS, 0)
    label_counts: dict[Any, int] = {}
    if task == CLASSIFICATION:
        for row in labeled.groupBy(SPLIT_COLUMN, LABEL_INDEX).count().collect():
            counts[row[SPLIT_COLUMN]] += int(row["count"])
            if row[SPLIT_COLUMN] == SPLITS[0]:
                label_counts[classes[row[LABEL_INDEX]]] = int(row["count"])
    else:
        for row in labeled.groupBy(SPLIT_COLUMN).count().collect():
            counts[row[SPLIT_COLUMN]] = int(row["count"])
    if min(counts.values()) == 0:
        labeled.unpersist()
        raise DataError(
            f"a split is empty ({counts}) with {kept} rows: use more data or "
            f"larger validation_fraction/test_fraction"
        )
    train = labeled.where(_c(SPLIT_COLUMN) == SPLITS[0])
    n_train = counts[SPLITS[0]]
    aggs = [
        *[F.mean(_c(f)).alias(f"m_{i}") for i, f in enumerate(numeric)],
        *[F.stddev_pop(_c(f)).alias(f"s_{i}") for i, f in enumerate(numeric)],
        *[F.min(_c(f)).alias(f"lo_{i}") for i, f in enumerate(numeric)],
        *[F.max(_c(f)).alias(f"hi_{i}") for i, f in enumerate(numeric)],
    ]
    if task == REGRESSION:
        aggs += [F.mean(_c(LABEL_VALUE)).alias("y_m"), F.stddev_pop(_c(LABEL_VALUE)).alias("y_s")]
    stats = train.agg(*aggs).first() if aggs else None
    vocabs: dict[str, list[str]] = {}
    freqs: dict[str, list[float]] = {}
    if categorical:
        # One pass: every (column, value) count of the training split, top MAX_VOCAB kept.
        pairs = (
            train.select(
                F.explode(
                    F.array(*[F.struct(F.lit(c).alias("c"), _c(c).alias("v")) for c in categorical])
                ).alias("p")
            )
            .groupBy("p.c", "p.v")
            .count()
        )
        ranked = pairs.where(F.col("v").isNotNull()).withColumn(
            "r", F.row_number().over(Window.partitionBy("c").orderBy(F.desc("count"), "v"))
        )
        rows = ranked.where(F.col("r") <= MAX_VOCAB).collect()
        for c in categorical:
            mine = sorted((r for r in rows if r["c"] == c), key=lambda r: r["r"])
            vocabs[c] = [str(r["v"]) for r in mine]
            seen = sum(int(r["count"]) for r in mine)
            freqs[c] = [int(r["count"]) / n_train for r in mine] + [
                max(0, n_train - seen) / n_train
            ]
    for name in SPLITS:
        (
            labeled.where(_c(SPLIT_COLUMN) == name)
            .drop(SPLIT_COLUMN)
            .write.mode("overwrite")
            .parquet(f"{output_dir.rstrip('/')}/{name}")
        )
    labeled.unpersist()
    encoder = FeatureEncoder(
        tuple(
            Column(f, CATEGORICAL, tuple(vocabs[f])) if f in categorical else Column(f, NUMERIC)
            for f in features
        )
    )
    mean, std = encoder.encoded_stats(
        {f: float(stats[f"m_{i}"] or 0.0) for i, f in enumerate(numeric)} if stats else {},
        {f: float(stats[f"s_{i}"] or 0.0) for i, f in enumerate(numeric)} if stats else {},
        freqs,
    )
    encoded = encoder.encoded_names()
    numeric_min = {f: float(stats[f"lo_{i}"]) for i, f in enumerate(numeric)} if stats else {}
    numeric_max = {f: float(stats[f"hi_{i}"]) for i, f in enumerate(numeric)} if stats else {}
    profile = {
        "source": source,
        "label_column": label_column,
        "task": task,
        "split": split_method,
        "input_columns": features,
        "categorical_columns": categorical,
        "encoding": encoder.to_dict(),
        "feature_names": encoded,
        "label_name": label_name,
        "classes": [_jsonable(c) for c in classes],
        "rows_read": total + malformed_rows,
        "rows_dropped_incomplete": total - kept,
        "rows_dropped_malformed": malformed_rows,
        # of those: rows with more fields than the header (a shifted or unquoted comma)
        "rows_dropped_extra_fields": extra_rows,
        "malformed_values_by_column": malformed,
        "split_counts": counts,
        "feature_mean": mean,
        "feature_std": std,
        # Ranges of the encoded inputs (one-hot slots: 0..1), for synthetic probe rows.
        "feature_min": [numeric_min.get(n, 0.0) for n in encoded],
        "feature_max": [numeric_max.get(n, 1.0) for n in encoded],
        "train_label_counts": {str(k): v for k, v in sorted(label_counts.items())},
        "paths": {name: f"{output_dir.rstrip('/')}/{name}" for name in SPLITS},
    }
    if task == REGRESSION and stats is not None:
        profile["label_mean"] = float(stats["y_m"] or 0.0)
        profile["label_std"] = float(stats["y_s"] or 0.0) or 1.0
    write_text(f"{output_dir.rstrip('/')}/{PROFILE_FILE}", json.dumps(profile, indent=2))
    return profile


def source_fingerprint(source: str) -> str | None:
    """What identifies the content of ``source`` cheaply: the built-in data set's name, a
    local file's size and modification time, a local folder's files' names, sizes and times;
    None for a remote URI (no cheap fingerprint: it is prepared every time)."""
    import hashlib

    if source.startswith(("sklearn:", "slaflow:")):
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
    *,
    source: str,
    label_column: str,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    options: dict[str, Any] | None = None,
) -> str | None:
    """The key under which prepared splits of the same content, label, fractions and seed,
    by this version of this job, are reused; None when the source has no fingerprint."""
    import hashlib

    fingerprint = source_fingerprint(source)
    if fingerprint is None:
        return None
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    blob = json.dumps(
        [fingerprint, label_column, validation_fraction, test_fraction, seed, code, options or {}],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _jsonable(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def main() -> None:  # pragma: no cover - spark-submit entrypoint
    """``spark-submit spark_jobs/prepare.py`` with the spec as JSON in SLAFLOW_JOB_SPEC."""
    from pyspark.sql import SparkSession

    spec = json.loads(os.environ["SLAFLOW_JOB_SPEC"])
    spark = SparkSession.builder.appName("slaflow-prepare").getOrCreate()
    spec["cache_dir"] = Path(spec["cache_dir"])
    print(json.dumps(run_prepare(spark, **spec)))


if __name__ == "__main__":  # pragma: no cover
    main()
