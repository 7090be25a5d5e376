"""Data-driven retraining: the training data as an Airflow Asset, and the task that notices
when it is new or has changed.

``training_data_watch`` runs :class:`TrainingDataWatchOperator` on a schedule; it fingerprints
the dataset (SHA-256 of a file, or of the names, sizes and mtimes under a folder) and emits an
asset event only when the fingerprint differs from the last event's. ``ml_lifecycle`` is
scheduled on that Asset, so a changed dataset starts a retrain, which the gate then compares
with the current champion. Datasets outside the local filesystem (S3, GCS, ...) are announced
by their producer instead, through Airflow's REST API (``POST /api/v2/assets/events``) or a
task with the Asset as its outlet.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from slaflow.settings import training_data_path

ASSET_NAME = "slaflow_training_data"


def training_data_asset() -> Asset:
    return Asset(name=ASSET_NAME, uri=training_data_path().as_uri(), group="slaflow")


def fingerprint(path: Path) -> dict[str, Any]:
    """Content fingerprint of a file, or of a folder's files (Parquet datasets)."""
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}
    if path.is_dir():
        digest = hashlib.sha256()
        total = 0
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = file.stat()
            total += stat.st_size
            digest.update(
                f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
        return {"sha256": digest.hexdigest(), "bytes": total}
    raise FileNotFoundError(path)


class TrainingDataWatchOperator(BaseOperator):
    """Emit a ``slaflow_training_data`` event when the dataset is new or changed; else skip.

    The last fingerprint is read from the Asset's own last event (``inlet_events``), so the
    state lives in Airflow's metadata DB and a retry or a second scheduler sees the same.
    """

    ui_color = "#e6f4ea"

    def __init__(self, **kwargs: Any) -> None:
        asset = training_data_asset()
        super().__init__(inlets=[asset], outlets=[asset], **kwargs)
        self.asset = asset

    def execute(self, context: Any) -> dict[str, Any]:
        path = training_data_path()
        if not path.exists():
            raise AirflowSkipException(
                f"no dataset at {path} (SLAFLOW_TRAINING_DATA): nothing to retrain on"
            )
        current = fingerprint(path)
        events = context["inlet_events"][self.asset]
        last = events[-1].extra if len(events) else {}
        if last.get("sha256") == current["sha256"]:
            raise AirflowSkipException(
                f"{path} unchanged since the last event (sha256 {current['sha256'][:12]})"
            )
        extra = {"path": str(path), **current, "previous_sha256": last.get("sha256")}
        context["outlet_events"][self.asset].extra = extra
        self.log.info(
            "%s %s (sha256 %s, %d bytes): ml_lifecycle retrains on it",
            path,
            "changed" if last else "is new",
            current["sha256"][:12],
            current["bytes"],
        )
        return extra
