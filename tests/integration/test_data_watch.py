"""training_data_watch through dag.test() on a real Airflow metadata DB: an asset event only
when the dataset is new or changed, with its fingerprint and path in the event's extra."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.quick]


def _events(session: Any) -> list[Any]:
    from airflow.models.asset import AssetEvent, AssetModel
    from sqlalchemy import select

    return list(
        session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "slaflow_training_data")
            .order_by(AssetEvent.id)
        )
    )


def test_watch_emits_an_event_only_for_new_or_changed_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.utils.session import create_session

    from slaflow import cli

    data = tmp_path / "incoming" / "training.csv"
    monkeypatch.setenv("SLAFLOW_TRAINING_DATA", str(data))
    cli.airflow_db_ready()

    def watch() -> str:
        run = cli.load_dag("training_data_watch").test()
        return str(cli.task_results(run)["check_training_data"]["state"])

    with create_session() as session:
        before = len(_events(session))
    assert watch().endswith("skipped")  # no file yet: nothing to retrain on
    data.parent.mkdir(parents=True)
    data.write_text("a,label\n1,0\n2,1\n")
    assert watch().endswith("success")
    assert watch().endswith("skipped")  # unchanged
    data.write_text("a,label\n1,0\n2,1\n3,1\n")
    assert watch().endswith("success")
    with create_session() as session:
        events = _events(session)[before:]
        assert len(events) == 2
        first, second = (e.extra for e in events)
    assert first["path"] == second["path"] == str(data)
    assert first["previous_sha256"] is None
    assert second["previous_sha256"] == first["sha256"] != second["sha256"]
    assert second["bytes"] == len("a,label\n1,0\n2,1\n3,1\n")
