"""Where every engine lives. Embedded defaults, each overridable by environment.

Resolution order for an endpoint (see ``operators.hooks``): an Airflow connection if one
exists (``slaflow_ray``, ``slaflow_mlflow``, ``slaflow_spark``), else the environment variable
below, else the embedded default. Nothing here runs at import time but reading variables.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

_REPO_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T", int, float)


def home() -> Path:
    """Project state folder: MLflow store, data, Ray storage, Airflow home (SLAFLOW_HOME)."""
    return Path(os.environ.get("SLAFLOW_HOME", _REPO_ROOT / ".slaflow")).resolve()


@dataclass(frozen=True)
class Endpoints:
    ray_address: str  # GCS address for ray.init (Serve deployment, resource queries)
    ray_dashboard_url: str  # Job API / dashboard
    serve_url: str  # Ray Serve HTTP proxy
    serve_host: str
    serve_port: int
    spark_master: str
    mlflow_tracking_uri: str
    data_dir: str  # where prepared Parquet goes; a shared path/URI on a cluster
    ray_storage: str  # Ray Train storage_path (checkpoints); shared on a cluster

    @classmethod
    def from_env(cls) -> Endpoints:
        h = home()
        serve_host = os.environ.get("SLAFLOW_SERVE_HOST", "127.0.0.1")
        serve_port = int(os.environ.get("SLAFLOW_SERVE_PORT", "8000"))
        return cls(
            ray_address=os.environ.get("SLAFLOW_RAY_ADDRESS", "127.0.0.1:6390"),
            ray_dashboard_url=os.environ.get("SLAFLOW_RAY_DASHBOARD_URL", "http://127.0.0.1:8265"),
            serve_url=os.environ.get("SLAFLOW_SERVE_URL", f"http://{serve_host}:{serve_port}"),
            serve_host=serve_host,
            serve_port=serve_port,
            spark_master=os.environ.get("SLAFLOW_SPARK_MASTER", "local[*]"),
            mlflow_tracking_uri=os.environ.get(
                "SLAFLOW_MLFLOW_TRACKING_URI", f"sqlite:///{h / 'mlflow' / 'mlflow.db'}"
            ),
            data_dir=os.environ.get("SLAFLOW_DATA_DIR", str(h / "data")),
            ray_storage=os.environ.get("SLAFLOW_RAY_STORAGE", str(h / "ray_storage")),
        )


def mlflow_ui_url(tracking_uri: str) -> str:
    """Where people open the MLflow UI: the tracking server itself, or ``make mlflow-ui``."""
    if tracking_uri.startswith(("http://", "https://")):
        return os.environ.get("SLAFLOW_MLFLOW_UI_URL", tracking_uri).rstrip("/")
    return os.environ.get("SLAFLOW_MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")


def airflow_ui_url() -> str:
    """The Airflow UI's base URL, for links from MLflow back to the Airflow run."""
    return os.environ.get("SLAFLOW_AIRFLOW_URL", "http://127.0.0.1:8080").rstrip("/")


def training_data_path() -> Path:
    """The dataset whose changes retrain the model (the ``slaflow_training_data`` Asset)."""
    return Path(
        os.environ.get("SLAFLOW_TRAINING_DATA", home() / "incoming" / "training.csv")
    ).resolve()


def data_roots() -> tuple[str, ...]:
    """Where runs may read data (``SLAFLOW_DATA_ROOTS``: folders or URI prefixes, separated by
    commas). Unset: ``SLAFLOW_HOME`` (bundled sets, prepared data, the default incoming
    folder) only. The folder of ``SLAFLOW_TRAINING_DATA`` is always allowed: the same admin
    who set that path decided its data is read. Checked by ``policies.check_data_source``."""
    configured = os.environ.get("SLAFLOW_DATA_ROOTS", "").strip()
    roots = [r for r in configured.split(",") if r.strip()] if configured else [str(home())]
    return (*roots, str(training_data_path().parent))


def retrain_schedule() -> str | None:
    """Cron expression of scheduled retraining (``SLAFLOW_RETRAIN_SCHEDULE``); None: off."""
    value = os.environ.get("SLAFLOW_RETRAIN_SCHEDULE", "").strip()
    return value or None


def data_watch_schedule() -> str:
    """How often ``training_data_watch`` looks for a new or changed dataset."""
    return os.environ.get("SLAFLOW_DATA_WATCH_SCHEDULE", "*/10 * * * *").strip()


def reconcile_schedule() -> str:
    """How often ``ml_reconcile`` makes serving equal the registry's champions."""
    return os.environ.get("SLAFLOW_RECONCILE_SCHEDULE", "*/15 * * * *").strip()


def retrain_contract() -> dict[str, object]:
    """The contract of runs nobody triggered by hand (schedule, new data).

    ``SLAFLOW_RETRAIN_CONTRACT`` names a JSON file of contract fields; unset: the defaults.
    The ``data_source`` of a data-triggered run is always the changed dataset.
    """
    import json

    path = os.environ.get("SLAFLOW_RETRAIN_CONTRACT", "").strip()
    if not path:
        return {}
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"SLAFLOW_RETRAIN_CONTRACT={path}: cannot read a JSON contract "
            f"({exc}). Fix: point it at a JSON object of contract fields"
        ) from exc
    if not isinstance(raw, dict):
        raise ValueError(
            f"SLAFLOW_RETRAIN_CONTRACT={path}: must hold a JSON object of contract fields"
        )
    return raw


def mlflow_artifact_root() -> str:
    """Artifact root for experiments created on the embedded SQLite store."""
    return os.environ.get("SLAFLOW_MLFLOW_ARTIFACT_ROOT", str(home() / "mlflow" / "artifacts"))


def ray_token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH", home() / "ray" / "auth_token"))


def ensure_ray_client_env(create_token: bool = False) -> None:
    """Make Ray clients find the cluster's auth token. Call before ``import ray``.

    Ray 2.60 turns token auth on and reads these variables when it is imported. Users of a
    real cluster set ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` themselves; the embedded
    cluster keeps its token in ``$SLAFLOW_HOME/ray/auth_token`` (mode 600).
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = ray_token_path()
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    if create_token and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))


def price_table_path() -> str:
    """JSON price table of the serving tiers (``SLAFLOW_PRICE_TABLE``); empty: the default."""
    return os.environ.get("SLAFLOW_PRICE_TABLE", "").strip()


def _positive_list(
    var: str, default: str, cast: Callable[[str], T], what: str, smallest: T, strict: bool
) -> list[T]:
    """A comma-separated list of positive numbers from ``var``, or an error naming the
    variable and an example (the default)."""
    raw = os.environ.get(var, default).strip()
    try:
        values = [cast(v) for v in raw.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"{var}={raw!r}: give {what} separated by commas, e.g. {default}") from exc
    if not values or any(v <= smallest if strict else v < smallest for v in values):
        raise ValueError(
            f"{var}={raw!r}: give {what} "
            f"{'above' if strict else 'of at least'} {smallest}, e.g. {default}"
        )
    return values


def profile_cpus() -> list[float]:
    """Replica shapes (CPUs) the serving profile measures (``SLAFLOW_PROFILE_CPUS``)."""
    return _positive_list("SLAFLOW_PROFILE_CPUS", "0.5,1", float, "CPUs", 0.0, strict=True)


def profile_batches() -> list[int]:
    """``@serve.batch`` sizes the serving profile measures (``SLAFLOW_PROFILE_BATCHES``)."""
    return _positive_list("SLAFLOW_PROFILE_BATCHES", "1,16", int, "batch sizes", 1, strict=False)


def ray_data_min_bytes() -> int:
    """Parquet size of a training split from which Train workers are fed by Ray Data's
    streaming split (``SLAFLOW_RAY_DATA_MIN_BYTES``, default 64 MiB; 0: always). A smaller
    split is read by each worker straight from its files: Ray Data's start (its coordinator
    actors and read tasks) took 10-15 s of every training job on 2 cores, more than a small
    table's whole training. A user's own loop is always fed by Ray Data (it may ask
    ``ray.train.get_dataset_shard``)."""
    from ray_jobs.data_io import RAY_DATA_MIN_BYTES

    raw = os.environ.get("SLAFLOW_RAY_DATA_MIN_BYTES", str(RAY_DATA_MIN_BYTES)).strip()
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(
            f"SLAFLOW_RAY_DATA_MIN_BYTES={raw!r}: give a whole number of bytes, e.g. 67108864"
        ) from exc
    if value < 0:
        raise ValueError(f"SLAFLOW_RAY_DATA_MIN_BYTES={raw!r}: give 0 or more bytes")
    return value


def ray_auth_token() -> str | None:
    """The Ray cluster's token for REST calls (dashboard, Serve API), if auth is on."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = ray_token_path()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def gpu_price() -> float:
    """Price of a GPU worker-second in CPU worker-seconds (``SLAFLOW_GPU_PRICE``, default 8):
    what makes the feasibility plan compare a GPU shape with a CPU one."""
    raw = os.environ.get("SLAFLOW_GPU_PRICE", "8").strip()
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"SLAFLOW_GPU_PRICE={raw!r}: give a number, e.g. 8") from exc
    if value <= 0:
        raise ValueError(f"SLAFLOW_GPU_PRICE={raw!r}: give a number above 0, e.g. 8")
    return value
