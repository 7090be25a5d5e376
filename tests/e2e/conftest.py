"""Fixtures of the end-to-end tests: one ``ml_lifecycle`` run per call, on the real stack."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import ARTIFACTS
from tests.reliability import current_test

#: Each run's task seconds, one JSON line per run: where the e2e time goes (docs/testing.md).
TIMINGS = ARTIFACTS / "e2e-task-seconds.jsonl"


@pytest.fixture(scope="module")
def lifecycle(ray_cluster: Any) -> Any:
    from slaflow import cli

    cli.airflow_db_ready()

    def run(conf: dict[str, Any], only: tuple[str, ...] = ()) -> dict[str, Any]:
        """One DAG run; ``only``: run just these tasks, mark the others done (as
        ``dag.test(mark_success_pattern=...)`` does)."""
        # A fresh parse per run: a DAG object reused for a second dag.test() in the same
        # process keeps the first run's conf as its params (checked: a run without deadline_s
        # after one with deadline_s 5 got 5). Workers parse the DAG per task; so do we.
        dag = cli.load_dag()
        pattern = None if not only else "(?!" + "|".join(f"{t}$" for t in only) + ").*"
        dag_run = dag.test(run_conf=conf, mark_success_pattern=pattern)
        tasks = cli.task_results(dag_run)
        TIMINGS.parent.mkdir(parents=True, exist_ok=True)
        with TIMINGS.open("a") as out:
            seconds = {t: v["seconds"] for t, v in tasks.items() if v["seconds"]}
            test = current_test()
            out.write(json.dumps({"test": test, "seconds": seconds}) + "\n")
        return {"state": str(dag_run.state), "tasks": tasks}

    return run


@pytest.fixture(scope="module")
def registry(lifecycle: Any) -> Any:
    from operators.hooks import MlflowHook

    return MlflowHook().client
