"""The production topology as real processes on this machine (no Docker).

PostgreSQL (already running on 127.0.0.1:5432) holds two fresh databases: Airflow's metadata
and MLflow's store. Started here: an MLflow tracking server on PostgreSQL with a local
artifact root; a Ray head (0 CPUs: it only runs job drivers and Serve's controller/proxy) and
two Ray worker nodes, one with a custom ``large`` resource; a Spark standalone master and
worker from pyspark's own classes; Airflow's api-server, scheduler, dag-processor and triggerer
on PostgreSQL with the LocalExecutor. Every endpoint reaches the DAGs by environment only.

Airflow's four services and the Ray nodes are supervised as ``restart: unless-stopped`` does
in docker-compose.yml and a Deployment does on Kubernetes: one that exits is started again (a
Ray worker whose head went away exits, and joins the new head when started again).
Airflow's scheduler exits when its database goes away under it (its loop does not retry a
lost connection); production runs it supervised, and so does this topology.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"

PORTS = {
    "ray_gcs": 6430,
    "ray_dashboard": 8268,
    "serve": 8021,
    "mlflow": 5055,
    "spark_master": 7177,
    "spark_ui": 8190,
    "spark_worker_ui": 8191,
    "airflow": 8095,
}


def _http_ok(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code in (401, 403)
    except OSError:
        return False


def _wait(what: str, check: Any, timeout_s: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: process {proc.args!r} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not up within {timeout_s:.0f}s")
        time.sleep(1)


@dataclass
class Topology:
    root: Path
    suffix: str = field(default_factory=lambda: str(os.getpid()))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: MLflow runs with basic auth; every client of the topology signs in as its admin.
    mlflow_user: str = "admin"
    mlflow_password: str = field(default_factory=lambda: secrets.token_hex(16))
    #: How often each supervised service was started again after it exited.
    restarts: dict[str, int] = field(default_factory=dict)
    _supervised: dict[str, tuple[list[str], dict[str, str] | None, Any]] = field(
        default_factory=dict
    )
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def airflow_db(self) -> str:
        return f"slaflow_airflow_{self.suffix}"

    @property
    def mlflow_db(self) -> str:
        return f"slaflow_mlflow_{self.suffix}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{PORTS['airflow']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{PORTS['mlflow']}"

    def env(self) -> dict[str, str]:
        # Nothing of the suite's own engines leaks in: mlflow.set_tracking_uri() exports
        # MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI into this process's environment.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLAFLOW_", "AIRFLOW", "MLFLOW_"))
        }
        env.update(
            {
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "SLAFLOW_HOME": str(self.root / "home"),
                "SLAFLOW_RAY_ADDRESS": f"127.0.0.1:{PORTS['ray_gcs']}",
                "SLAFLOW_RAY_DASHBOARD_URL": f"http://127.0.0.1:{PORTS['ray_dashboard']}",
                "SLAFLOW_SERVE_PORT": str(PORTS["serve"]),
                "SLAFLOW_SPARK_MASTER": f"spark://127.0.0.1:{PORTS['spark_master']}",
                "SLAFLOW_MLFLOW_TRACKING_URI": self.mlflow_url,
                "MLFLOW_TRACKING_USERNAME": self.mlflow_user,
                "MLFLOW_TRACKING_PASSWORD": self.mlflow_password,
                "SLAFLOW_DATA_DIR": str(self.root / "shared" / "data"),
                "SLAFLOW_RAY_STORAGE": str(self.root / "shared" / "ray_storage"),
                "SLAFLOW_AIRFLOW_URL": self.airflow_url,
                # Data-driven retraining: the watched dataset and the contract of unattended runs
                # (the tests write both); the watch runs when triggered, not on a clock.
                "SLAFLOW_TRAINING_DATA": str(self.root / "incoming" / "training.csv"),
                "SLAFLOW_RETRAIN_CONTRACT": str(self.root / "retrain_contract.json"),
                "SLAFLOW_DATA_WATCH_SCHEDULE": "0 0 1 1 *",
                # the tests take their model off by hand at the end: no reconcile on a clock
                "SLAFLOW_RECONCILE_SCHEDULE": "0 0 1 1 *",
                # both replica shapes, one batch size: halves each run's serving profile, which
                # CI's 90 minutes need (batching is measured by the routing integration tests)
                "SLAFLOW_PROFILE_BATCHES": "1",
                "RAY_AUTH_MODE": "token",
                # The suite's token when it has one: a Ray already imported here keeps reading it.
                "RAY_AUTH_TOKEN_PATH": os.environ.get(
                    "RAY_AUTH_TOKEN_PATH", str(self.root / "home" / "ray" / "auth_token")
                ),
                "PYSPARK_PYTHON": sys.executable,
                "PYSPARK_DRIVER_PYTHON": sys.executable,
                "SPARK_HOME": str(Path(__import__("pyspark").__file__).parent),
                "AIRFLOW_HOME": str(self.root / "airflow"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{PG}/{self.airflow_db}",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",  # user:role
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__API__PORT": str(PORTS["airflow"]),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{PORTS['airflow']}/execution/",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                # parsed once at start: re-parsing every 30 s (each parse imports the operators)
                # took a share of the 2 cores the whole topology lives on
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            }
        )
        return env

    # ------------------------------------------------------------------ processes

    def _spawn(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str] | None = None,
        supervise: bool = False,
        before_restart: Any = None,
    ) -> None:
        """Start ``name``; ``supervise``: start it again whenever it exits, until ``stop``
        (after calling ``before_restart``, if given)."""
        if supervise:
            first = not self._supervised
            self._supervised[name] = (cmd, env, before_restart)
            if first:
                threading.Thread(
                    target=self._supervise, name="topology-supervisor", daemon=True
                ).start()
        log = open(self.root / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - kept open
        self.procs[name] = subprocess.Popen(
            cmd,
            env=env or self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.root,
        )

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` and every process under it, as a lost host does; a supervised
        service is then started again. Descendants are found through their parents, not the
        process group: ``ray start`` runs the GCS and the raylet in sessions of their own."""
        root = self.procs[name].pid
        doomed = [root, *_descendants(root)]
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _supervise(self) -> None:
        while not self._stopping.wait(1.0):
            for name, (cmd, env, before_restart) in list(self._supervised.items()):
                proc = self.procs.get(name)
                if proc is None or proc.poll() is None or self._stopping.is_set():
                    continue
                with open(self.root / "logs" / f"{name}.log", "ab") as log:
                    log.write(
                        f"\n[topology] {name} exited with {proc.returncode}: starting it "
                        f"again\n".encode()
                    )
                self.restarts[name] = self.restarts.get(name, 0) + 1
                if before_restart is not None:
                    before_restart()
                self._spawn(name, cmd, env)

    def _timed(self, name: str, start: float) -> None:
        self.timings[name] = round(time.monotonic() - start, 1)

    def start(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        (self.root / "shared").mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        self._create_databases()
        self._timed("postgres_databases", t)
        self._start_ray()
        self._start_mlflow()
        self._start_spark()
        self._start_airflow()

    def _create_databases(self) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            for db in (self.airflow_db, self.mlflow_db):
                cur.execute(f'DROP DATABASE IF EXISTS "{db}"')
                cur.execute(f'CREATE DATABASE "{db}"')
        conn.close()

    def _start_ray(self) -> None:
        from slaflow.settings import ensure_ray_client_env

        t = time.monotonic()
        ensure_ray_client_env(create_token=True)
        gcs = PORTS["ray_gcs"]
        common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats", "--block"]
        self._spawn(
            "ray-head",
            [
                str(BIN / "ray"),
                "start",
                "--head",
                f"--port={gcs}",
                "--num-cpus=0",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={PORTS['ray_dashboard']}",
                f"--ray-client-server-port={gcs + 1}",
                f"--dashboard-agent-listen-port={gcs + 2}",
                f"--runtime-env-agent-port={gcs + 3}",
                f"--metrics-export-port={gcs + 4}",
                "--min-worker-port=23000",
                "--max-worker-port=23499",
                f"--temp-dir=/tmp/slaflow-cluster-{gcs}",
                *common,
            ],
            supervise=True,
            # `ray start --head` refuses to start where the address it last started at is
            # still named by a local raylet's flags: here, the workers' raylets on this same
            # host, which outlive their head for a while (on separate hosts they are not
            # seen). Forget that address, as a new host would not know it.
            before_restart=lambda: Path(f"/tmp/slaflow-cluster-{gcs}/ray_current_cluster").unlink(
                missing_ok=True
            ),
        )
        _wait(
            "Ray head",
            lambda: _http_ok(f"http://127.0.0.1:{PORTS['ray_dashboard']}/api/version"),
            90,
            [self.procs["ray-head"]],
        )
        # One at a time: two raylets starting together on 2 cores time out.
        for i, extra in enumerate((['--resources={"large": 1}'], []), start=1):
            base = gcs + 10 * i
            self._spawn(
                f"ray-worker-{i}",
                [
                    str(BIN / "ray"),
                    "start",
                    f"--address=127.0.0.1:{gcs}",
                    "--num-cpus=2",
                    f"--dashboard-agent-listen-port={base + 2}",
                    f"--runtime-env-agent-port={base + 3}",
                    f"--metrics-export-port={base + 4}",
                    f"--min-worker-port={23500 + 500 * i}",
                    f"--max-worker-port={23999 + 500 * i}",
                    *extra,
                    *common,
                ],
                supervise=True,
            )
            _wait(
                f"Ray worker {i}",
                lambda n=i + 1: self.ray_nodes_alive() >= n,
                120,
                [self.procs[f"ray-worker-{i}"]],
            )
        self._timed("ray_3_nodes", t)

    def ray_query(self, code: str) -> Any:
        """Run ``code`` (which prints JSON) as a fresh Ray driver on this topology."""
        errors = []
        for _ in range(3):  # the state API can time out on a loaded 2-core machine
            out = subprocess.run(
                [sys.executable, "-c", code],
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=180,
            )
            if out.returncode == 0:
                return json.loads(out.stdout.strip().splitlines()[-1])
            errors.append(out.stderr[-1500:])
            time.sleep(5)
        raise RuntimeError("Ray query failed 3 times:\n" + "\n---\n".join(errors))

    def ray_nodes_alive(self) -> int:
        """Ray nodes the dashboard reports ALIVE (0 while it does not answer)."""
        import urllib.request

        token = Path(self.env()["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        req = urllib.request.Request(
            f"http://127.0.0.1:{PORTS['ray_dashboard']}/nodes?view=summary",
            headers={"Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                data = json.loads(resp.read())
        except (OSError, ValueError):
            return 0
        return sum(1 for n in data["data"]["summary"] if n["raylet"]["state"] == "ALIVE")

    def _start_mlflow(self) -> None:
        """MLflow's server with basic auth, as compose runs it (deploy/mlflow-auth.ini, with
        the auth store in this topology's folder): anonymous requests get 401."""
        t = time.monotonic()
        auth_ini = self.root / "mlflow-auth.ini"
        auth_ini.write_text(
            (REPO / "deploy" / "mlflow-auth.ini")
            .read_text()
            .replace("/var/lib/mlflow-auth/", f"{self.root}/")
        )
        env = {
            **self.env(),
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
            "MLFLOW_AUTH_ADMIN_USERNAME": self.mlflow_user,
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.mlflow_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        }
        self._spawn(
            "mlflow",
            [
                str(BIN / "mlflow"),
                "server",
                "--app-name",
                "basic-auth",
                "--host",
                "127.0.0.1",
                "--port",
                str(PORTS["mlflow"]),
                "--backend-store-uri",
                f"{PG}/{self.mlflow_db}",
                "--serve-artifacts",
                "--artifacts-destination",
                str(self.root / "shared" / "mlartifacts"),
                "--workers",
                "1",
            ],
            env,
        )
        _wait(
            "MLflow server",
            lambda: _http_ok(f"{self.mlflow_url}/health"),
            120,
            [self.procs["mlflow"]],
        )
        self._timed("mlflow_server", t)

    def _start_spark(self) -> None:
        t = time.monotonic()
        spark_class = str(Path(self.env()["SPARK_HOME"]) / "bin" / "spark-class")
        self._spawn(
            "spark-master",
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(PORTS["spark_master"]),
                "--webui-port",
                str(PORTS["spark_ui"]),
            ],
        )
        _wait(
            "Spark master",
            lambda: _http_ok(f"http://127.0.0.1:{PORTS['spark_ui']}"),
            90,
            [self.procs["spark-master"]],
        )
        self._spawn(
            "spark-worker",
            [
                spark_class,
                "org.apache.spark.deploy.worker.Worker",
                "--host",
                "127.0.0.1",
                "--cores",
                "1",
                "--memory",
                "1g",
                "--webui-port",
                str(PORTS["spark_worker_ui"]),
                f"spark://127.0.0.1:{PORTS['spark_master']}",
            ],
        )
        _wait("Spark worker", self._spark_workers, 90, [self.procs["spark-worker"]])
        self._timed("spark_master_worker", t)

    def _spark_workers(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{PORTS['spark_ui']}/json/", timeout=3
            ) as resp:
                return bool(json.loads(resp.read()).get("aliveworkers", 0) >= 1)
        except (OSError, ValueError):
            return False

    def _start_airflow(self) -> None:
        t = time.monotonic()
        (self.root / "airflow").mkdir(parents=True, exist_ok=True)
        migrate = subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"],
            env=self.env(),
            capture_output=True,
            text=True,
            cwd=self.root,
        )
        if migrate.returncode != 0:
            raise RuntimeError(
                f"airflow db migrate failed:\n{migrate.stdout[-2000:]}{migrate.stderr[-2000:]}"
            )
        self._timed("airflow_db_migrate_postgres", t)
        for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
            self._spawn(f"airflow-{name}", [str(BIN / "airflow"), name], supervise=True)
        _wait(
            "Airflow API",
            lambda: _http_ok(f"{self.airflow_url}/api/v2/version"),
            180,
            [self.procs["airflow-api-server"]],
        )
        self._timed("airflow_services", t)

    # ------------------------------------------------------------------ REST

    def token(self) -> str:
        passwords = self.root / "airflow" / "simple_auth_manager_passwords.json.generated"
        password = json.loads(passwords.read_text())["admin"]
        body = json.dumps({"username": "admin", "password": password}).encode()
        req = urllib.request.Request(
            f"{self.airflow_url}/auth/token",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(json.loads(resp.read())["access_token"])

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Airflow's REST API as the admin; ``body``: JSON-able, or raw bytes sent as they are.
        Returns the status and the decoded answer (its text when it is not JSON)."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.airflow_url}/api/v2{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token()}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, _decoded(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _decoded(exc.read())

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        self._stopping.set()  # nothing is started again from here on
        if "ray" in sys.modules:
            import ray

            ray.shutdown()
        order = [n for n in self.procs if n.startswith("airflow")] + [
            "spark-worker",
            "spark-master",
            "mlflow",
            "ray-worker-2",
            "ray-worker-1",
            "ray-head",
        ]
        for name in order:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)  # test state: nothing to drain gracefully
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            import psycopg2

            conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
            conn.autocommit = True
            with conn.cursor() as cur:
                for db in (self.airflow_db, self.mlflow_db):
                    cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            conn.close()
        except Exception as exc:  # best effort: report, never mask the test's own failure
            print(f"could not drop test databases: {exc}", file=sys.stderr)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux: from each process's parent in /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def restart_postgres(timeout_s: float = 120.0) -> float:
    """Restart the machine's PostgreSQL server: every connection of every service (Airflow's
    scheduler, api-server, triggerer, dag-processor; MLflow's server) is cut, as a database
    failover or a server restart does. Debian's ``pg_ctlcluster`` as root (it runs as the
    cluster's owner); waits until the server answers again and returns the seconds it was away.
    """
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    with conn.cursor() as cur:
        cur.execute("SHOW cluster_name")
        version, cluster = str(cur.fetchone()[0]).split("/")
    conn.close()
    t = time.monotonic()
    subprocess.run(
        ["pg_ctlcluster", version, cluster, "restart", "-m", "fast"],
        check=True,
        capture_output=True,
        timeout=timeout_s,
    )
    while True:
        try:
            psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres").close()
            return time.monotonic() - t
        except psycopg2.OperationalError:
            if time.monotonic() - t > timeout_s:
                raise
            time.sleep(0.2)


def _decoded(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")
