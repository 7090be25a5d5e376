"""Ray Train's data-parallel trainer for tf-keras, without TensorFlow in the job's driver.

Ray's ``TensorflowTrainer`` imports TensorFlow where it is built (its package imports it),
which costs the driver ~7 s here, while all its backend does is give each worker a
``TF_CONFIG`` for ``MultiWorkerMirroredStrategy``. This backend does just that, and nothing
for a single worker, which trains without that strategy (``ray_jobs.worker``).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.train.backend import Backend, BackendConfig


def _address() -> str:
    """This worker's address and a free port, for TensorFlow's collective server."""
    import ray

    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return f"{ray.util.get_node_ip_address()}:{port}"


def _set_tf_config(addresses: list[str], index: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
    )


class _TfConfigBackend(Backend):
    def on_start(self, worker_group: Any, backend_config: Any) -> None:
        if len(worker_group) < 2:
            return
        import ray

        addresses = worker_group.execute(_address)
        ray.get(
            [
                worker_group.execute_single_async(i, _set_tf_config, addresses=addresses, index=i)
                for i in range(len(worker_group))
            ]
        )


@dataclass
class TfConfigBackendConfig(BackendConfig):
    @property
    def backend_cls(self) -> type[Backend]:
        return _TfConfigBackend


def tf_trainer(
    train_loop_per_worker: Callable[[dict[str, Any]], None],
    *,
    train_loop_config: dict[str, Any],
    scaling_config: Any,
    run_config: Any,
    datasets: dict[str, Any] | None = None,
) -> Any:
    """A Ray Train (V2) data-parallel trainer for tf-keras training loops."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    return DataParallelTrainer(
        train_loop_per_worker,
        train_loop_config=train_loop_config,
        backend_config=TfConfigBackendConfig(),
        scaling_config=scaling_config,
        run_config=run_config,
        datasets=datasets,
    )
