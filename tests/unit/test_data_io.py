"""The worker-side batching of a streamed shard (``ray_jobs.data_io.rebatch``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ray_jobs.data_io import rebatch

pytestmark = pytest.mark.unit


def _chunks(sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    out, start = [], 0
    for n in sizes:
        rows = np.arange(start, start + n)
        out.append((rows.reshape(-1, 1).astype("float32"), rows.astype("int32")))
        start += n
    return out


@pytest.mark.parametrize(
    ("sizes", "batch", "steps"),
    [
        ([100], 10, 10),
        ([7, 7, 7, 7], 10, 2),  # batches straddle chunk boundaries
        ([3] * 20, 8, 7),  # every batch spans chunks
        ([64, 1, 64], 16, 8),
        ([100], 10, 3),  # fewer steps than the data holds
    ],
)
def test_rows_in_order_exact_batches_and_steps(sizes: list[int], batch: int, steps: int) -> None:
    got = list(rebatch(_chunks(sizes), batch, steps))
    expected_steps = min(steps, sum(sizes) // batch)
    assert len(got) == expected_steps
    assert all(len(y) == batch and x.shape == (batch, 1) for x, y in got)
    seen = np.concatenate([y for _, y in got]) if got else np.array([], dtype="int32")
    # every row once, in stream order, none repeated or lost before the last full batch
    np.testing.assert_array_equal(seen, np.arange(expected_steps * batch))
    np.testing.assert_array_equal(np.concatenate([x[:, 0] for x, _ in got]), seen)


def test_a_shard_shorter_than_one_batch_yields_nothing() -> None:
    assert list(rebatch(_chunks([5]), 8, 3)) == []


def test_stops_pulling_chunks_once_the_steps_are_done() -> None:
    pulled = []

    def stream():  # type: ignore[no-untyped-def]
        for chunk in _chunks([10] * 10):
            pulled.append(len(pulled))
            yield chunk

    assert len(list(rebatch(stream(), 10, 2))) == 2
    assert len(pulled) == 2  # the pass is not read to its end


def _split(tmp_path: Any, rows: int) -> tuple[str, dict[str, Any]]:
    import pandas as pd

    frame = pd.DataFrame({"a": np.arange(rows, dtype="float64"), "b": np.ones(rows)})
    frame["__label_index"] = (np.arange(rows) % 3).astype("int32")
    path = tmp_path / "train"
    path.mkdir()
    frame.to_parquet(path / "part-0.parquet")
    profile = {"feature_names": ["a", "b"], "split_counts": {"train": rows}}
    return str(path), profile


def test_a_small_split_is_read_from_its_files_and_a_large_one_by_ray_data(tmp_path: Any) -> None:
    from ray_jobs.data_io import FEED_FILES, FEED_RAY_DATA, feed_of, split_bytes

    path, _ = _split(tmp_path, 1000)
    size = split_bytes(path)
    assert size > 0
    assert feed_of({"train_path": path, "ray_data_min_bytes": size + 1}) == FEED_FILES
    assert feed_of({"train_path": path, "ray_data_min_bytes": size}) == FEED_RAY_DATA
    assert feed_of({"train_path": path, "ray_data_min_bytes": 0}) == FEED_RAY_DATA
    # a user's loop may ask ray.train.get_dataset_shard: always Ray Data
    assert feed_of({"train_path": path, "ray_data_min_bytes": 1 << 40}, user_loop=True) == (
        FEED_RAY_DATA
    )


@pytest.mark.parametrize("world", [1, 2, 3])
def test_workers_reading_files_get_equal_disjoint_shards_reshuffled_each_epoch(
    tmp_path: Any, world: int
) -> None:
    from ray_jobs.data_io import FEED_FILES, ShardStream

    path, profile = _split(tmp_path, 1001)
    config = {"feed": FEED_FILES, "train_path": path, "profile": profile, "seed": 4}
    streams = [ShardStream(config, rank, world) for rank in range(world)]
    assert {s.rows for s in streams} == {1001 // world}  # same steps on every worker
    seen = []
    for s in streams:
        first = np.concatenate([x[:, 0] for x, _ in s.chunks(64)])
        second = np.concatenate([x[:, 0] for x, _ in s.chunks(64)])
        assert len(first) == s.rows and sorted(first) == sorted(second)
        assert not np.array_equal(first, second)  # a new order each epoch
        seen.extend(first.tolist())
    assert len(set(seen)) == len(seen)  # no row on two workers
    batches = list(streams[0].batches(10, streams[0].rows // 10))
    assert len(batches) == streams[0].rows // 10
    x, y = batches[0]
    np.testing.assert_array_equal(y, x[:, 0].astype("int64") % 3)  # rows stay whole
