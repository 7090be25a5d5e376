"""Every DAG file imports cleanly, cheaply, and with the contract as its trigger form."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

from policies import FIELDS

pytestmark = pytest.mark.unit
DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.fixture(scope="module")
def dagbag() -> object:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag: object) -> None:
    assert dagbag.import_errors == {}  # type: ignore[attr-defined]
    assert {
        "ml_lifecycle",
        "ml_rollback",
        "ml_undeploy",
        "ml_reconcile",
        "training_data_watch",
    } <= set(dagbag.dag_ids)  # type: ignore[attr-defined]


def test_reconcile_checks_then_deploys_each_model_it_names(dagbag: object) -> None:
    """ml_reconcile: a check whose answer is mapped to one canary-less deploy per model, on a
    clock, one run at a time; its form takes a model name or nothing (every model)."""
    from airflow.sdk import Param

    dag = dagbag.dags["ml_reconcile"]  # type: ignore[attr-defined]
    assert dag.get_task("deploy").upstream_task_ids == {"check"}
    assert dag.get_task("deploy").partial_kwargs["canary"] is False
    assert dag.max_active_runs == 1
    assert dag.timetable.expression == "*/15 * * * *"
    param = dag.params.get_param("model_name")
    for ok in ("", "slaflow-digits"):
        Param(ok, **param.schema).resolve()
    with pytest.raises(Exception, match="does not match"):
        Param("a'b", **param.schema).resolve()


def test_lifecycle_stages_in_order(dagbag: object) -> None:
    dag = dagbag.dags["ml_lifecycle"]  # type: ignore[attr-defined]
    order = [
        "plan",
        "prepare",
        "feasibility",
        "train",
        "evaluate",
        "register",
        "gate",
        "review",
        "promote",
        "profile_serving",
        "deploy",
        "verify",
    ]
    assert set(dag.task_ids) == set(order)
    for up, down in zip(order, order[1:], strict=False):
        assert dag.get_task(down).upstream_task_ids == {up}


def test_lifecycle_runs_on_new_training_data(dagbag: object) -> None:
    """Data-driven retraining: ml_lifecycle is scheduled on the Asset the watch DAG emits."""
    lifecycle = dagbag.dags["ml_lifecycle"]  # type: ignore[attr-defined]
    watch = dagbag.dags["training_data_watch"]  # type: ignore[attr-defined]
    emitted = {a.name for a in watch.get_task("check_training_data").outlets}
    assert emitted == {"slaflow_training_data"}
    assert "name='slaflow_training_data'" in repr(lifecycle.timetable.asset_condition)


def test_retrain_schedule_comes_from_configuration() -> None:
    """SLAFLOW_RETRAIN_SCHEDULE adds a cron schedule beside the data trigger."""
    code = (
        "from airflow.dag_processing.dagbag import DagBag; "
        "d = DagBag(dag_folder='dags/ml_lifecycle.py').dags['ml_lifecycle']; "
        "print(type(d.timetable).__name__, d.timetable.timetable.expression, "
        "d.timetable.asset_condition)"
    )
    env = {**os.environ, "SLAFLOW_RETRAIN_SCHEDULE": "0 3 * * 1"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=DAGS.parent,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "AssetOrTimeSchedule 0 3 * * 1" in out.stdout
    assert "slaflow_training_data" in out.stdout


def test_rollback_form_names_the_model(dagbag: object) -> None:
    dag = dagbag.dags["ml_rollback"]  # type: ignore[attr-defined]
    assert set(dag.params) == {"model_name"}
    assert dag.get_task("deploy").upstream_task_ids == {"rollback"}


def test_trigger_form_is_the_contract(dagbag: object) -> None:
    dag = dagbag.dags["ml_lifecycle"]  # type: ignore[attr-defined]
    assert set(dag.params) == {f.name for f in FIELDS}
    deadline = dag.params.get_param("deadline_s")
    assert deadline.schema["exclusiveMinimum"] == 0 and deadline.schema["section"]


@pytest.mark.parametrize(
    ("field", "value"), [("deadline_s", -1), ("target_metric", "mape"), ("latency_percentile", 97)]
)
def test_bad_conf_is_rejected_by_the_params(dagbag: object, field: str, value: object) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["ml_lifecycle"].params)  # type: ignore[attr-defined]
    with pytest.raises(ParamValidationError, match=field):
        params.update({field: value})
        params.validate()


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS.glob("*.py")))
def test_parse_imports_no_heavy_engine(dag_file: str) -> None:
    """DAG files are parsed often under a timeout: TF, MLflow, Ray, Spark stay out."""
    code = (
        f"import runpy, sys; runpy.run_path({str(DAGS / dag_file)!r}); "
        "print(','.join(m for m in ('tensorflow', 'mlflow', 'ray', 'pyspark', 'tf_keras') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=True,
    )
    assert out.stdout.strip() == ""


def test_form_is_valid_with_its_defaults(dagbag: object) -> None:
    """Airflow's form treats an empty text field of a non-null type as missing and disables
    Trigger (seen in the browser): optional text params are nullable and default to None."""
    from policies import RunContract

    params = copy.deepcopy(dagbag.dags["ml_lifecycle"].params)  # type: ignore[attr-defined]
    params.validate()
    for name in params:
        param = params.get_param(name)
        if param.value in ("", None):
            assert "null" in param.schema["type"], name
            assert param.value is None, name
    contract = RunContract.from_dict(dict(params))
    assert contract.spark_master == "" and contract.serving_node_resource == ""
