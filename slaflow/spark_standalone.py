"""A Spark standalone master and worker on this machine, from pyspark's own classes.

No Spark download and no Docker: ``pyspark`` ships ``bin/spark-class`` and the jars, so
``SparkStandalone(...).start()`` runs ``org.apache.spark.deploy.master.Master`` and
``...worker.Worker`` as child processes. The tests and ``make bench-spark`` use it to show the
dynaSpark controller resizing a real application; ``spark_master`` in the contract (or
``SLAFLOW_SPARK_MASTER``) points the prepare stage at it, or at any other standalone master.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


@dataclass
class SparkStandalone:
    root: Path
    cores: int = 3
    memory: str = "3g"
    port: int = 7377
    ui_port: int = 8390
    worker_ui_port: int = 8391
    #: The worker's external shuffle service (``None``: none). With it, shuffle files outlive
    #: the executor that wrote them, so the deadline controller can release executors
    #: mid-job without the next stage losing its input; apps must set :meth:`app_conf`.
    shuffle_port: int | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[Any]] = field(default_factory=list)

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def app_conf(self) -> dict[str, str]:
        """The Spark conf an application needs to use this cluster's shuffle service."""
        if self.shuffle_port is None:
            return {}
        return {
            "spark.shuffle.service.enabled": "true",
            "spark.shuffle.service.port": str(self.shuffle_port),
        }

    def _env(self) -> dict[str, str]:
        import pyspark

        home = str(Path(pyspark.__file__).parent)
        env = {
            **os.environ,
            "SPARK_HOME": home,
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_LOG_DIR": str(self.root / "logs"),
            "SPARK_WORKER_DIR": str(self.root / "work"),
        }
        if self.shuffle_port is not None:  # spark-class passes these to the Worker's JVM
            env["SPARK_WORKER_OPTS"] = " ".join(f"-D{k}={v}" for k, v in self.app_conf().items())
        return env

    def alive_workers(self) -> int:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.ui_port}/json/", timeout=2
            ) as resp:
                return sum(w["state"] == "ALIVE" for w in json.load(resp)["workers"])
        except (OSError, ValueError, KeyError):
            return 0

    def _spawn(self, name: str, args: list[str]) -> None:
        env = self._env()
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        self.procs.append(
            subprocess.Popen(
                [f"{env['SPARK_HOME']}/bin/spark-class", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def start(self, wait_s: float = 120.0) -> SparkStandalone:
        self.root.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "master",
            [
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--webui-port",
                str(self.ui_port),
            ],
        )
        self._spawn(
            "worker",
            [
                "org.apache.spark.deploy.worker.Worker",
                "--host",
                "127.0.0.1",
                "--cores",
                str(self.cores),
                "--memory",
                self.memory,
                "--webui-port",
                str(self.worker_ui_port),
                self.master_url,
            ],
        )
        end = time.monotonic() + wait_s
        while self.alive_workers() < 1:
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > end:
                tail = (self.root / "master.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(
                    f"Spark standalone did not come up on {self.master_url}; master log:\n{tail}"
                )
            time.sleep(1)
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in self._logs:
            log.close()
        self.procs.clear()
        self._logs.clear()

    def __enter__(self) -> SparkStandalone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
