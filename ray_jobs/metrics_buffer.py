"""Per-epoch metrics written to MLflow off the training path.

Training must not wait on its tracking server: ``MetricsBuffer.log`` only queues a batch, and a
thread writes the queue in order with the client's own retries (MLflow's REST client retries a
refused or failed call with backoff for minutes). While the server is down or restarting, the
batches wait in memory and training goes on; when it answers again they are written, each
epoch at its own step and time. ``flush`` waits for the queue to drain (bounded) and is called
before the model is exported and before the worker exits, so nothing is lost when a segment
ends.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any


class MetricsBuffer:
    def __init__(self, client: Any, run_id: str, retry_s: float = 2.0) -> None:
        self._client = client
        self._run_id = run_id
        self._retry_s = retry_s
        self._queue: deque[list[Any]] = deque()
        self._cond = threading.Condition()
        self.failures = 0
        self.written = 0
        self._thread = threading.Thread(target=self._drain, name="slaflow-metrics", daemon=True)
        self._thread.start()

    def log(self, metrics: list[Any]) -> None:
        """Queue one batch of ``mlflow.entities.Metric``; never blocks."""
        with self._cond:
            self._queue.append(metrics)
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued batch is written; False if ``timeout_s`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue, timeout_s)

    def _drain(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                batch = self._queue[0]
                waiting = len(self._queue)
            t0 = time.monotonic()
            try:
                self._client.log_batch(self._run_id, metrics=batch)
            except Exception as exc:  # noqa: BLE001 - the server is away: keep it, retry
                self.failures += 1
                print(
                    f"[slaflow] MLflow did not take the epoch metrics ({type(exc).__name__}: "
                    f"{str(exc)[:160]}); {waiting} batch(es) kept in memory, retrying",
                    flush=True,
                )
                time.sleep(min(30.0, self._retry_s * 2 ** min(self.failures, 4)))
                continue
            slow = time.monotonic() - t0
            with self._cond:
                self._queue.popleft()
                self.written += 1
                left = len(self._queue)
                self._cond.notify_all()
            if slow > 5.0:
                print(
                    f"[slaflow] MLflow took the epoch metrics after {slow:.0f} s of retries; "
                    f"{left} more batch(es) to write",
                    flush=True,
                )
