"""Reading the Parquet splits that the prepare job writes, encoded for the model: whole (small
splits, tuning), streamed in chunks (evaluation), or as a Ray Data shard per Train worker."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
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


#: Rows per chunk a training worker pulls from its Ray Data shard and encodes at once, at
#: most CHUNK_BYTES of encoded features (a wide table gets shorter chunks).
CHUNK_ROWS = 16_384
CHUNK_BYTES = 32 << 20
#: Validation rows a training worker scores each epoch (the first rows of the seeded-shuffled
#: split): the early stop's score, at a cost that does not grow with the table.
VAL_ROWS_MAX = 50_000


def _columns(profile: Mapping[str, Any]) -> tuple[FeatureEncoder, str, list[str]]:
    encoder = FeatureEncoder.of_profile(profile)
    label = label_name(profile)
    return encoder, label, [*encoder.input_columns, label]


def _xy(frame: Any, encoder: FeatureEncoder, label: str) -> tuple[np.ndarray, np.ndarray]:
    y = frame[label].to_numpy(dtype="int32" if label == LABEL_INDEX else "float32")
    return encoder.encode_frame(frame), y


def read_xy_head(
    path: str, profile: Mapping[str, Any], limit: int = VAL_ROWS_MAX
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` rows of a split, encoded (Parquet read stops there)."""
    import pyarrow.dataset as pads

    encoder, label, columns = _columns(profile)
    table = pads.dataset(path, format="parquet").head(limit, columns=columns)
    return _xy(table.to_pandas(), encoder, label)


def iter_xy(
    path: str, profile: Mapping[str, Any], chunk_rows: int = CHUNK_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A split in encoded chunks, streamed from Parquet (memory of one chunk, not the split)."""
    import pyarrow.dataset as pads

    encoder, label, columns = _columns(profile)
    for batch in pads.dataset(path, format="parquet").to_batches(
        columns=columns, batch_size=chunk_rows
    ):
        if batch.num_rows:
            yield _xy(batch.to_pandas(), encoder, label)


#: How Train workers get the training split: Ray Data's streaming split, or each worker
#: reading its strided share of the split's files (a split under ``ray_data_min_bytes``).
FEED_RAY_DATA = "ray_data"
FEED_FILES = "files"
RAY_DATA_MIN_BYTES = 64 << 20


def split_bytes(path: str) -> int:
    """Bytes of a split's Parquet files (local or remote, through pyarrow's filesystem)."""
    import pyarrow.dataset as pads

    ds = pads.dataset(path, format="parquet")
    return sum(int(info.size or 0) for info in ds.filesystem.get_file_info(ds.files))


def feed_of(spec: Mapping[str, Any], *, user_loop: bool = False) -> str:
    """Driver side: how this job's workers get the training split. Ray Data for a split of
    ``ray_data_min_bytes`` or more, and always for a user's loop (it may ask
    ``ray.train.get_dataset_shard``); under it each worker reads its share of the files."""
    if user_loop:
        return FEED_RAY_DATA
    floor = int(spec.get("ray_data_min_bytes", RAY_DATA_MIN_BYTES))
    if floor <= 0:
        return FEED_RAY_DATA
    return FEED_FILES if split_bytes(str(spec["train_path"])) < floor else FEED_RAY_DATA


def training_datasets(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Driver side: the training split as a Ray Dataset, split across the Train workers.

    Read tasks ask for no CPU: the workers hold the CPUs the plan gave the run, and a read task
    that waited for one would stall them all (the encoding runs in the worker, on its CPUs).
    Ray Data's V2 Parquet path lists files in a task of 1 CPU that no option changes, which
    deadlocks when the workers hold every CPU (seen on a 2-CPU node with a 2-CPU worker); the
    V1 path lists them here, in the driver."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.use_datasource_v2 = False
    _, _, columns = _columns(spec["profile"])
    ds = ray.data.read_parquet(spec["train_path"], columns=columns, ray_remote_args={"num_cpus": 0})
    return {"train": ds}


class ShardStream:
    """One Train worker's shard of the training split, streamed from Ray Data: each epoch a new
    pass over the shard in encoded, shuffled chunks (the worker holds one or two chunks, never
    the split). The shards are equal (Ray Train's default ``streaming_split(equal=True)``), so
    every worker runs the same number of steps.

    A split under ``ray_data_min_bytes`` (``config["feed"] == "files"``, set by the driver)
    has no Ray Dataset: the worker reads the split's files once, keeps every ``world``-th row
    from its rank (``rows`` of them, the same count on every worker) and shuffles the whole
    shard each epoch."""

    def __init__(self, config: Mapping[str, Any], rank: int, world: int) -> None:
        self._encoder, self._label, _ = _columns(config["profile"])
        self._width = len(config["profile"]["feature_names"])
        self._seed = int(config.get("seed", 0)) * 1000 + rank
        self._epoch = 0
        self._held: tuple[np.ndarray, np.ndarray] | None = None
        if config.get("feed") == FEED_FILES:
            self._shard = None
            x, y = read_xy(str(config["train_path"]), config["profile"])
            self.rows = len(y) // world
            self._held = (x[rank::world][: self.rows], y[rank::world][: self.rows])
            return
        import ray.train

        self._shard = ray.train.get_dataset_shard("train")
        self.rows = int(config["profile"]["split_counts"]["train"]) // world

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One pass over the shard (a new Ray Data epoch), rows shuffled within each chunk
        (files feed: over the whole shard)."""
        rng = np.random.default_rng(self._seed + 7919 * self._epoch)
        self._epoch += 1
        if self._held is not None:
            x, y = self._held
            order = rng.permutation(len(y))
            for start in range(0, len(y), chunk_rows):
                part = order[start : start + chunk_rows]
                yield x[part], y[part]
            return
        assert self._shard is not None
        # All-numeric tables skip pandas: NumPy columns stacked (a 2,000-column DataFrame per
        # chunk cost more than the training step).
        numeric = self._encoder.all_numeric
        for batch in self._shard.iter_batches(
            batch_size=chunk_rows,
            batch_format="numpy" if numeric else "pandas",
            prefetch_batches=1,
        ):
            if numeric:
                cols = self._encoder.input_columns
                x = np.stack([batch[c] for c in cols], axis=1).astype("float32", copy=False)
                y = batch[self._label].astype("int32" if self._label == LABEL_INDEX else "float32")
            else:
                x, y = _xy(batch, self._encoder, self._label)
            order = rng.permutation(len(y))
            yield x[order], y[order]

    def batches(self, batch: int, steps: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Exactly ``steps`` batches of ``batch`` rows from one pass over the shard; the pass
        is closed when they are out, so Ray Data's prefetched blocks are let go at once (a
        pass left open held them: +300 MB a worker per epoch on a 2,000-column table)."""
        rows = max(1, CHUNK_BYTES // (4 * max(1, self._width)))
        chunks = self.chunks(max(batch, min(CHUNK_ROWS, rows) // batch * batch))
        try:
            yield from rebatch(chunks, batch, steps)
        finally:
            chunks.close()


def rebatch(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]], batch: int, steps: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """At most ``steps`` batches of exactly ``batch`` rows from chunks of any size: rows are
    carried across chunk boundaries, and the last partial batch is dropped (every worker then
    runs the same steps, as MultiWorkerMirroredStrategy needs)."""
    done = 0
    carry: tuple[np.ndarray, np.ndarray] | None = None
    for x, y in chunks:
        if carry is not None:
            x, y = np.concatenate([carry[0], x]), np.concatenate([carry[1], y])
            carry = None
        start = 0
        while start + batch <= len(y) and done < steps:
            yield x[start : start + batch], y[start : start + batch]
            start += batch
            done += 1
        if done >= steps:
            return
        if start < len(y):
            carry = (x[start:], y[start:])
