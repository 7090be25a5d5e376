"""The worker-side batching of a streamed shard (``ray_jobs.data_io.rebatch``)."""

from __future__ import annotations

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
