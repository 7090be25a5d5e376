"""The embedded Ray head node: long-lived, loopback-only, token-authenticated, owned by us.

It runs as ``ray start --head --block`` in its own process session, recorded in a pid file, so
``stop()`` ends this cluster alone (``ray stop`` would end every Ray process of the machine).
All its ports derive from the GCS port, so a second embedded cluster (the test suite's) can
run beside the demo's by changing ``SLAFLOW_RAY_ADDRESS`` and ``SLAFLOW_RAY_DASHBOARD_URL``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from slaflow.settings import Endpoints, ensure_ray_client_env, home

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class ClusterError(RuntimeError):
    pass


@dataclass(frozen=True)
class LocalRayCluster:
    host: str
    gcs_port: int
    dashboard_port: int
    num_cpus: int
    state_dir: Path

    @classmethod
    def from_env(cls) -> LocalRayCluster:
        ep = Endpoints.from_env()
        host, _, port = ep.ray_address.rpartition(":")
        dash = urlparse(ep.ray_dashboard_url)
        if host not in LOCAL_HOSTS or dash.hostname not in LOCAL_HOSTS:
            raise ClusterError(
                f"SLAFLOW_RAY_ADDRESS={ep.ray_address} / SLAFLOW_RAY_DASHBOARD_URL="
                f"{ep.ray_dashboard_url} name an external cluster; slaflow starts only the "
                f"embedded one on loopback. Start that cluster yourself, or unset both"
            )
        return cls(
            host=host,
            gcs_port=int(port),
            dashboard_port=dash.port or 8265,
            num_cpus=int(os.environ.get("SLAFLOW_LOCAL_RAY_CPUS", "4")),
            state_dir=home() / "ray",
        )

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.host}:{self.dashboard_port}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"head-{self.gcs_port}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"head-{self.gcs_port}.log"

    def command(self) -> list[str]:
        p = self.gcs_port
        worker_lo = 20000 + (p % 20) * 1000
        return [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={p}",
            f"--node-ip-address={self.host}",
            f"--dashboard-host={self.host}",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={p + 1}",
            f"--dashboard-agent-listen-port={p + 2}",
            f"--runtime-env-agent-port={p + 3}",
            f"--metrics-export-port={p + 4}",
            f"--min-worker-port={worker_lo}",
            f"--max-worker-port={worker_lo + 999}",
            f"--num-cpus={self.num_cpus}",
            f"--temp-dir=/tmp/slaflow-ray-{p}",
            "--disable-usage-stats",
        ]

    def reachable(self, timeout_s: float = 3.0) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.dashboard_url}/api/version", timeout=timeout_s
            ) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError:
            return True  # it answered (401 without a token): up
        except OSError:
            return False

    def start(self, wait_s: float = 90.0) -> bool:
        """Start the head unless one answers; True if this call started it."""
        ensure_ray_client_env(create_token=True)
        if self.reachable():
            return False
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ.copy()
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")  # job entrypoints' python
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self.command(),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + wait_s
        while not self.reachable():
            if proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-3000:]
                raise ClusterError(f"`ray start` exited with {proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise ClusterError(
                    f"Ray head did not answer within {wait_s:.0f}s; see {self.log_file}"
                )
            time.sleep(0.5)
        return True

    def stop(self, wait_s: float = 45.0) -> bool:
        """SIGTERM the head we started (it drains and stops its processes); True if stopped."""
        if not self.pid_file.exists():
            return False
        pid = int(self.pid_file.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            self.pid_file.unlink(missing_ok=True)
            return False
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child: reap it
                    break
            except ChildProcessError:  # started by another process (the CLI)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
            time.sleep(0.5)
        else:
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True
