"""A resumed run never trusts a damaged checkpoint: ``latest_checkpoint_path`` checks each
candidate against the manifest written last into it (every file's size and SHA-256) and falls
back to the newest one that is whole. On real files, as Ray Train leaves them in its storage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ray_jobs.learners import load_snapshot, save_snapshot
from ray_jobs.train import (
    LATEST,
    MANIFEST_FILE,
    STATE_FILE,
    latest_checkpoint_path,
    write_manifest,
)
from tests.reliability import record

pytestmark = pytest.mark.unit
CONFIG = {"framework": "keras"}


def _checkpoint(run: Path, index: int, epoch: int) -> Path:
    folder = run / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    weights = [np.full((64, 32), float(epoch), dtype="float32"), np.arange(32, dtype="float32")]
    save_snapshot(CONFIG, weights, folder, LATEST)
    (folder / STATE_FILE).write_text(json.dumps({"epoch": epoch}))
    write_manifest(folder)
    return folder


def _weights_file(folder: Path) -> Path:
    return next(p for p in folder.iterdir() if p.name.startswith(LATEST))


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    run = tmp_path / "storage" / "run-1"
    for i, epoch in enumerate((2, 4, 6)):
        _checkpoint(run, i, epoch)
    return run


def test_the_newest_whole_checkpoint_is_resumed(run: Path, tmp_path: Path) -> None:
    got = latest_checkpoint_path(str(tmp_path / "storage"), "run-1")
    assert got == str(run / "checkpoint_000002")
    assert load_snapshot(CONFIG, Path(got), LATEST)[0][0, 0] == 6.0


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
@pytest.mark.chaos
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(
    run: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    newest = run / "checkpoint_000002"
    weights = _weights_file(newest)
    data = weights.read_bytes()
    if damage == "truncate":  # a disk that filled, a copy cut off
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, other bytes
        weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif damage == "delete":
        weights.unlink()
    else:
        (newest / MANIFEST_FILE).write_text("{not json")
    got = latest_checkpoint_path(str(tmp_path / "storage"), "run-1")
    record(
        f"the newest checkpoint damaged ({damage})",
        resumed_from=Path(got or "").name,
        fell_back_to_the_previous=got == str(run / "checkpoint_000001"),
    )
    assert got == str(run / "checkpoint_000001")
    assert load_snapshot(CONFIG, Path(got), LATEST)[0][0, 0] == 4.0
    assert "checkpoint_000002 (epoch 6) is damaged" in capsys.readouterr().out


def test_no_whole_checkpoint_means_a_fresh_start(run: Path, tmp_path: Path) -> None:
    for folder in run.iterdir():
        weights = _weights_file(folder)
        weights.write_bytes(weights.read_bytes()[:10])
    assert latest_checkpoint_path(str(tmp_path / "storage"), "run-1") is None


def test_a_checkpoint_from_before_manifests_is_still_resumed(run: Path, tmp_path: Path) -> None:
    (run / "checkpoint_000002" / MANIFEST_FILE).unlink()
    got = latest_checkpoint_path(str(tmp_path / "storage"), "run-1")
    assert got == str(run / "checkpoint_000002")
