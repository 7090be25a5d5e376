"""``slaflow`` command line: the embedded cluster, the Airflow environment and the demo.

    slaflow ray-up | ray-down | ray-status   the long-lived local Ray cluster (Serve lives on it)
    slaflow demo [--conf FILE] [--verbose]   run ml_lifecycle end to end, print the summary
    slaflow rollback --model NAME            champion back to previous_champion, and serve it
    slaflow undeploy --model NAME            take a model off the endpoint (registry untouched)
    slaflow env                              the environment for airflow, mlflow, ray, serve
    slaflow contract-docs                    the contract reference (docs/contract.md)

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
        "AIRFLOW__CORE__DAGS_FOLDER": os.environ.get(
            "AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags")
        ),
        "AIRFLOW__CORE__LOAD_EXAMPLES": os.environ.get("AIRFLOW__CORE__LOAD_EXAMPLES", "False"),
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "60",
        # The embedded UI/API answers on loopback only (standalone would bind 0.0.0.0).
        "AIRFLOW__API__HOST": os.environ.get("AIRFLOW__API__HOST", "127.0.0.1"),
        # The embedded setup is for trying things: a triggered run should start at once.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": os.environ.get(
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False"
        ),
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
            _log(
                f"Ray cluster up in {time.monotonic() - started:.1f}s ({cluster.num_cpus} "
                f"logical CPUs): dashboard {ep.ray_dashboard_url}, GCS {ep.ray_address}; "
                f"log {cluster.log_file}"
            )
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
        _log(
            f"No embedded Ray cluster recorded in {cluster.pid_file}; a cluster started by "
            f"hand with `ray start` stops with `ray stop`"
        )


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
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        env=os.environ.copy(),
        check=True,
        capture_output=True,
    )
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
        tis = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
            )
        ).all()
        for ti in tis:
            row = session.scalars(
                XComModel.get_many(
                    run_id=dag_run.run_id,
                    key="return_value",
                    dag_ids=dag_run.dag_id,
                    task_ids=ti.task_id,
                )
            ).first()
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
        dag = dag.partial_subset(task_ids=[until], include_upstream=True, include_downstream=False)
    started = time.monotonic()
    dag_run = dag.test(run_conf=conf)
    wall = time.monotonic() - started
    results = task_results(dag_run)
    return {"state": str(dag_run.state), "wall_seconds": round(wall, 1), "tasks": results}


STAGES = (
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
)


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


def _summary_lines(summary: dict[str, Any]) -> list[str]:
    metric = str(summary.get("target_metric") or "accuracy")
    lines = [
        f"model {summary['model_name']} v{summary['model_version']} -> alias "
        f"{summary['alias']}; test {metric} {summary.get(metric, summary.get('accuracy')):.4f}",
        f"training {summary['training_seconds']}s, deadline "
        f"{'met' if summary['deadline_met'] else 'MISSED'} ({summary['stop_reason']})",
    ]
    if summary.get("endpoint_url"):
        lines.append(
            f"endpoint {summary['endpoint_url']} serves v{summary['served_version']}: "
            f"p50 {summary['verify_p50_ms']} ms, p99 {summary['verify_p99_ms']} ms"
        )
    if summary.get("placement"):
        lines.append(f"placement: {summary['placement']}")
    lines += [f"MLflow UI: make mlflow-ui  (run {summary['mlflow_run_id']})"]
    if summary.get("endpoint_url"):
        lines.append(
            f"try: curl -s -X POST {summary['endpoint_url']} -H 'Content-Type: "
            f"application/json' -d @{REPO_ROOT / 'examples' / 'digit_request.json'}"
        )
    return lines


def demo(conf: dict[str, Any], verbose: bool = False) -> int:
    """Run ml_lifecycle in a child process, show one line per stage, then the stage table,
    the summary and, as the last line of stdout, the JSON summary. The child's logs (task,
    Ray, Spark) go to a file whose path is printed; ``verbose`` shows them live too."""
    from rich.console import Console

    from slaflow.console import read_outcome, run_watched, summary_table

    apply_env()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = home() / "logs"
    log_path, result_path = logs / f"demo-{stamp}.log", logs / f"demo-{stamp}.json"
    conf_path = logs / f"demo-{stamp}.conf.json"
    logs.mkdir(parents=True, exist_ok=True)
    conf_path.write_text(json.dumps(conf))
    err = Console(stderr=True, highlight=False)
    out = Console(highlight=False, soft_wrap=True)
    err.print(
        f"[bold]slaflow demo[/]: ml_lifecycle on the embedded stack; full logs in "
        f"{log_path}" + ("" if verbose else " (make demo VERBOSE=1 shows them live)")
    )
    code = run_watched(
        [
            sys.executable,
            "-m",
            "slaflow.cli",
            "run-lifecycle",
            "--conf",
            str(conf_path),
            "--result",
            str(result_path),
        ],
        log_path,
        verbose=verbose,
        console=err,
    )
    outcome = read_outcome(result_path)
    if outcome is None:
        err.print(
            f"[red]the run ended (exit {code}) before it produced a result; see {log_path}[/]"
        )
        print(json.dumps({"state": "error", "log": str(log_path)}), flush=True)
        return 1
    out.print(summary_table(outcome, STAGES))
    tasks = outcome["tasks"]
    summary = (tasks.get("verify") or {}).get("value")
    if summary:
        summary["stage_seconds"] = {s: tasks.get(s, {}).get("seconds") for s in STAGES}
        summary["demo_wall_seconds"] = outcome["wall_seconds"]
        summary["log"] = str(log_path)
        profiled = (tasks.get("profile_serving") or {}).get("value") or {}
        deployed = (tasks.get("deploy") or {}).get("value") or {}
        summary["serving_profile"] = {k: profiled.get(k) for k in ("reused", "seconds")}
        summary["canary"] = deployed.get("canary", [])
        for line in _summary_lines(summary):
            out.print(f"  {line}")
        print(json.dumps(summary), flush=True)
        return 0 if "success" in outcome["state"] else 1
    failed = [s for s, t in tasks.items() if "success" not in t["state"]]
    out.print(f"  see the log for why: {log_path}")
    print(
        json.dumps({"state": outcome["state"], "failed_or_skipped": failed, "log": str(log_path)}),
        flush=True,
    )
    return 1


def run_lifecycle_to_file(conf_path: Path, result_path: Path) -> int:
    """The demo's child: run ml_lifecycle, write its task results as JSON."""
    outcome = run_lifecycle(json.loads(conf_path.read_text()))
    _close_engines()
    result_path.write_text(json.dumps(outcome, default=str))
    return 0 if "success" in outcome["state"] else 1


def rollback(model_name: str) -> int:
    """``ml_rollback`` in-process; says plainly when there is nothing to roll back to."""
    from mlflow_config.registry import get_alias_version
    from operators.hooks import MlflowHook
    from policies import PREVIOUS_CHAMPION

    apply_env()
    if get_alias_version(MlflowHook().client, model_name, PREVIOUS_CHAMPION) is None:
        print(
            f"rollback refused: model {model_name!r} has no '{PREVIOUS_CHAMPION}' alias, so "
            "there is no earlier champion to go back to; nothing was changed",
            flush=True,
        )
        return 2
    airflow_db_ready()
    ray_up()
    dag_run = load_dag("ml_rollback").test(run_conf={"model_name": model_name})
    results = task_results(dag_run)
    _close_engines()
    value = ((results.get("rollback") or {}).get("value") or {}).get("rollback") or {}
    deployed = (results.get("deploy") or {}).get("value") or {}
    print(
        json.dumps(
            {
                "state": str(dag_run.state),
                "champion": value.get("champion"),
                "demoted": value.get("demoted"),
                "serving": deployed.get("model_version"),
                "endpoint_url": deployed.get("endpoint_url"),
            }
        ),
        flush=True,
    )
    return 0 if "success" in str(dag_run.state) else 1


def undeploy(model_name: str) -> int:
    """``ml_undeploy`` in-process: the model leaves the endpoint, the registry stays."""
    apply_env()
    airflow_db_ready()
    ray_up()
    dag_run = load_dag("ml_undeploy").test(run_conf={"model_name": model_name})
    results = task_results(dag_run)
    _close_engines()
    value = (results.get("undeploy") or {}).get("value") or {}
    print(
        json.dumps(
            {
                "state": str(dag_run.state),
                "model_name": model_name,
                "deleted": value.get("deleted"),
                "freed_cpus": value.get("freed_cpus"),
            }
        ),
        flush=True,
    )
    return 0 if "success" in str(dag_run.state) else 1


def tool_env() -> dict[str, str]:
    """What ``eval "$(slaflow env)"`` exports: the Airflow settings of the embedded setup, and
    the variables the ray, serve, mlflow and airflow CLIs read, pointed at the same endpoints
    the DAGs use (so ``ray status``, ``ray job list``, ``serve status`` and
    ``mlflow experiments search`` work as they are)."""
    ep = Endpoints.from_env()
    env = {
        **airflow_env(),
        "SLAFLOW_HOME": str(home()),
        "SLAFLOW_MLFLOW_TRACKING_URI": ep.mlflow_tracking_uri,
        "MLFLOW_TRACKING_URI": ep.mlflow_tracking_uri,
        "SLAFLOW_RAY_ADDRESS": ep.ray_address,
        "SLAFLOW_RAY_DASHBOARD_URL": ep.ray_dashboard_url,
        "SLAFLOW_SERVE_URL": ep.serve_url,
        "RAY_ADDRESS": ep.ray_address,
        "RAY_API_SERVER_ADDRESS": ep.ray_dashboard_url,
        "RAY_DASHBOARD_ADDRESS": ep.ray_dashboard_url,
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
    }
    if os.environ.get("RAY_AUTH_TOKEN"):
        env["RAY_AUTH_TOKEN"] = os.environ["RAY_AUTH_TOKEN"]
    else:
        env["RAY_AUTH_TOKEN_PATH"] = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slaflow")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("ray-up", help="start the embedded Ray cluster (loopback only)")
    up.add_argument("--num-cpus", type=int, default=None)
    sub.add_parser("ray-down", help="stop the embedded Ray cluster")
    sub.add_parser("ray-status", help="say whether the configured Ray cluster answers")
    d = sub.add_parser("demo", help="run ml_lifecycle end to end and print the JSON summary")
    d.add_argument("--conf", type=Path, help="JSON file with contract fields (else defaults)")
    d.add_argument("--verbose", action="store_true", help="show the task, Ray and Spark logs")
    r = sub.add_parser("run-lifecycle", help=argparse.SUPPRESS)
    r.add_argument("--conf", type=Path, required=True)
    r.add_argument("--result", type=Path, required=True)
    sub.add_parser("env", help="print the environment for airflow/mlflow/ray/serve commands")
    sub.add_parser("contract-docs", help="print the contract reference (docs/contract.md)")
    rb = sub.add_parser(
        "rollback", help="run ml_rollback: champion back to previous_champion, registry and serving"
    )
    rb.add_argument("--model", required=True, help="registered model name")
    ud = sub.add_parser(
        "undeploy", help="run ml_undeploy: take a model off the endpoint (registry untouched)"
    )
    ud.add_argument("--model", required=True, help="registered model name")
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
        return demo(conf, verbose=args.verbose)
    elif args.cmd == "run-lifecycle":
        return run_lifecycle_to_file(args.conf, args.result)
    elif args.cmd == "rollback":
        return rollback(args.model)
    elif args.cmd == "undeploy":
        return undeploy(args.model)
    elif args.cmd == "contract-docs":
        from slaflow.docs import contract_reference

        sys.stdout.write(contract_reference())
    elif args.cmd == "env":
        for key, value in tool_env().items():
            print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
