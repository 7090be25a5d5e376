"""``slaflow`` command line: the embedded cluster, the Airflow environment and the demo.

    slaflow ray-up | ray-down | ray-status   the long-lived local Ray cluster (Serve lives on it)
    slaflow demo [--conf FILE]               run ml_lifecycle end to end, print the summary
    slaflow env                              print the environment the DAGs run with

Airflow and Ray read their environment at import time, so this module sets it up first and
imports them only inside the commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from slaflow.local_cluster import ClusterError, LocalRayCluster
from slaflow.settings import Endpoints, ensure_ray_client_env, home

REPO_ROOT = Path(__file__).resolve().parents[1]


def airflow_env() -> dict[str, str]:
    """Airflow on SQLite under $SLAFLOW_HOME/airflow, DAGs from this checkout (overridable)."""
    airflow_home = Path(os.environ.get("AIRFLOW_HOME", home() / "airflow"))
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": os.environ.get("AIRFLOW__CORE__DAGS_FOLDER",
                                                     str(REPO_ROOT / "dags")),
        "AIRFLOW__CORE__LOAD_EXAMPLES": os.environ.get("AIRFLOW__CORE__LOAD_EXAMPLES", "False"),
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "60",
        # The embedded UI/API answers on loopback only (standalone would bind 0.0.0.0).
        "AIRFLOW__API__HOST": os.environ.get("AIRFLOW__API__HOST", "127.0.0.1"),
        # The embedded setup is for trying things: a triggered run should start at once.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": os.environ.get(
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False"),
    }


def apply_env() -> None:
    for key, value in airflow_env().items():
        os.environ.setdefault(key, value)
    ensure_ray_client_env(create_token=True)
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")


def _log(msg: str) -> None:
    print(f"[slaflow] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- Ray cluster


def ray_reachable() -> bool:
    return LocalRayCluster.from_env().reachable() if _is_local() else True


def _is_local() -> bool:
    try:
        LocalRayCluster.from_env()
        return True
    except ClusterError:
        return False


def ray_up(num_cpus: int | None = None) -> None:
    """Start the embedded head node on loopback unless a cluster already answers."""
    apply_env()
    ep = Endpoints.from_env()
    if not _is_local():
        _log(f"Using the external Ray cluster at {ep.ray_dashboard_url} (GCS {ep.ray_address})")
        return
    cluster = LocalRayCluster.from_env()
    if num_cpus:
        cluster = dataclasses.replace(cluster, num_cpus=num_cpus)
    started = time.monotonic()
    try:
        if cluster.start():
            _log(f"Ray cluster up in {time.monotonic() - started:.1f}s ({cluster.num_cpus} "
                 f"logical CPUs): dashboard {ep.ray_dashboard_url}, GCS {ep.ray_address}; "
                 f"log {cluster.log_file}")
        else:
            _log(f"Ray cluster already up: dashboard {ep.ray_dashboard_url}")
    except ClusterError as exc:
        raise SystemExit(str(exc)) from exc


def ray_down() -> None:
    """Stop the embedded cluster this project started (its Serve applications end with it)."""
    apply_env()
    cluster = LocalRayCluster.from_env()
    if cluster.stop():
        _log("Embedded Ray cluster stopped")
    else:
        _log(f"No embedded Ray cluster recorded in {cluster.pid_file}; a cluster started by "
             f"hand with `ray start` stops with `ray stop`")


# --------------------------------------------------------------------------- Airflow


def airflow_db_ready() -> None:
    """``airflow db migrate`` once per Airflow version (it costs ~7 s)."""
    apply_env()
    stamp = Path(os.environ["AIRFLOW_HOME"]) / ".slaflow-migrated"
    import airflow

    if stamp.exists() and stamp.read_text() == airflow.__version__:
        return
    _log("Initialising the Airflow metadata database (airflow db migrate)")
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
                   env=os.environ.copy(), check=True, capture_output=True)
    stamp.write_text(airflow.__version__)


def load_dag(dag_id: str = "ml_lifecycle") -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    return bag.get_dag(dag_id)


def task_results(dag_run: Any) -> dict[str, Any]:
    """Return-value XComs and timings of each task of a finished DAG run."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    out: dict[str, Any] = {}
    with create_session() as session:
        tis = session.scalars(select(TaskInstance).where(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id)).all()
        for ti in tis:
            row = session.scalars(XComModel.get_many(
                run_id=dag_run.run_id, key="return_value", dag_ids=dag_run.dag_id,
                task_ids=ti.task_id)).first()
            out[ti.task_id] = {
                "state": str(ti.state),
                "seconds": None if ti.duration is None else round(float(ti.duration), 2),
                "value": None if row is None else XComModel.deserialize_value(row),
            }
    return out


def run_lifecycle(conf: dict[str, Any], until: str | None = None) -> dict[str, Any]:
    """Trigger ml_lifecycle in-process (``dag.test``) and gather its summary.

    ``until``: run only that task and its upstream (e.g. ``train`` for training benchmarks).
    """
    apply_env()
    airflow_db_ready()
    ray_up()
    dag = load_dag()
    if until is not None:
        dag = dag.partial_subset(task_ids=[until], include_upstream=True,
                                 include_downstream=False)
    started = time.monotonic()
    dag_run = dag.test(run_conf=conf)
    wall = time.monotonic() - started
    results = task_results(dag_run)
    return {"state": str(dag_run.state), "wall_seconds": round(wall, 1), "tasks": results}


STAGES = ("plan", "prepare", "feasibility", "train", "evaluate", "register", "gate", "review",
          "promote", "profile_serving", "deploy", "verify")


def _close_engines() -> None:
    """Stop the in-process Spark session and Ray driver now, so their shutdown logs come
    before the summary (the JSON must be the last line of stdout)."""
    if "pyspark" in sys.modules:
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None:
            active.stop()
    if "ray" in sys.modules:
        import ray

        ray.shutdown()
    # py4j logs "Closing down clientserver connection" from a destructor at interpreter exit,
    # to stdout: quiet it so the JSON summary stays the last line.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    sys.stdout.flush()
    sys.stderr.flush()


def demo(conf: dict[str, Any]) -> int:
    outcome = run_lifecycle(conf)
    _close_engines()
    tasks = outcome["tasks"]
    lines = ["", "slaflow demo: ml_lifecycle " + outcome["state"] +
             f" in {outcome['wall_seconds']}s", "  stage           state      seconds"]
    for stage in STAGES:
        t = tasks.get(stage, {})
        lines.append(f"  {stage:<15} {t.get('state', '-'):<10} {t.get('seconds') or '-'}")
    summary = (tasks.get("verify") or {}).get("value")
    if summary:
        summary["stage_seconds"] = {s: tasks.get(s, {}).get("seconds") for s in STAGES}
        summary["demo_wall_seconds"] = outcome["wall_seconds"]
        lines += [
            f"  model {summary['model_name']} v{summary['model_version']} -> alias "
            f"{summary['alias']}; test accuracy {summary['accuracy']:.4f}",
            f"  training {summary['training_seconds']}s, deadline "
            f"{'met' if summary['deadline_met'] else 'MISSED'} ({summary['stop_reason']})",
            f"  endpoint {summary['endpoint_url']}: p50 {summary['verify_p50_ms']} ms, "
            f"p99 {summary['verify_p99_ms']} ms",
            *([f"  placement: {summary['placement']}"] if summary.get("placement") else []),
            f"  MLflow UI: make mlflow-ui  (run {summary['mlflow_run_id']})",
            f"  try: curl -s -X POST {summary['endpoint_url']} -H 'Content-Type: application/"
            f"json' -d @{REPO_ROOT / 'examples' / 'digit_request.json'}",
        ]
    print("\n".join(lines), flush=True)
    if not summary:
        failed = [s for s, t in tasks.items() if "success" not in t["state"]]
        print(json.dumps({"state": outcome["state"], "failed_or_skipped": failed}), flush=True)
        return 1
    print(json.dumps(summary), flush=True)
    return 0 if "success" in outcome["state"] else 1


def rollback(model_name: str) -> int:
    """``ml_rollback`` in-process; says plainly when there is nothing to roll back to."""
    from mlflow_config.registry import get_alias_version
    from operators.hooks import MlflowHook
    from policies import PREVIOUS_CHAMPION

    apply_env()
    if get_alias_version(MlflowHook().client, model_name, PREVIOUS_CHAMPION) is None:
        print(f"rollback refused: model {model_name!r} has no '{PREVIOUS_CHAMPION}' alias, so "
              "there is no earlier champion to go back to; nothing was changed", flush=True)
        return 2
    airflow_db_ready()
    ray_up()
    dag_run = load_dag("ml_rollback").test(run_conf={"model_name": model_name})
    results = task_results(dag_run)
    _close_engines()
    value = (results.get("rollback") or {}).get("value") or {}
    deployed = (results.get("deploy") or {}).get("value") or {}
    print(json.dumps({"state": str(dag_run.state), "champion": value.get("champion"),
                      "demoted": value.get("demoted"),
                      "serving": deployed.get("model_version"),
                      "endpoint_url": deployed.get("endpoint_url")}), flush=True)
    return 0 if "success" in str(dag_run.state) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slaflow")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("ray-up", help="start the embedded Ray cluster (loopback only)")
    up.add_argument("--num-cpus", type=int, default=None)
    sub.add_parser("ray-down", help="stop the embedded Ray cluster (ray stop)")
    sub.add_parser("ray-status", help="say whether the configured Ray cluster answers")
    d = sub.add_parser("demo", help="run ml_lifecycle end to end and print the JSON summary")
    d.add_argument("--conf", type=Path, help="JSON file with contract fields (else defaults)")
    sub.add_parser("env", help="print the environment for airflow/mlflow commands")
    rb = sub.add_parser("rollback", help="run ml_rollback: champion back to previous_champion, "
                                         "registry and serving")
    rb.add_argument("--model", required=True, help="registered model name")
    args = parser.parse_args(argv)
    apply_env()
    if args.cmd == "ray-up":
        ray_up(args.num_cpus)
    elif args.cmd == "ray-down":
        ray_down()
    elif args.cmd == "ray-status":
        ok = ray_reachable()
        print(f"Ray at {Endpoints.from_env().ray_dashboard_url}: {'up' if ok else 'down'}")
        return 0 if ok else 1
    elif args.cmd == "demo":
        conf = json.loads(args.conf.read_text()) if args.conf else {}
        return demo(conf)
    elif args.cmd == "rollback":
        return rollback(args.model)
    elif args.cmd == "env":
        ep = Endpoints.from_env()
        env = {**airflow_env(), "SLAFLOW_HOME": str(home()),
               "SLAFLOW_MLFLOW_TRACKING_URI": ep.mlflow_tracking_uri,
               "RAY_AUTH_TOKEN_PATH": os.environ.get("RAY_AUTH_TOKEN_PATH", "")}
        for key, value in env.items():
            print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
