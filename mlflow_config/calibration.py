"""Throughput calibrations and past learning curves, kept in MLflow.

Calibrations live in the ``slaflow-calibration`` experiment, one run per key (cluster shape +
job shape), so they are cached across DAG runs and visible in the MLflow UI. Past learning
curves come from finished training runs of the same model with the same key.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

CALIBRATION_EXPERIMENT = "slaflow-calibration"
TAG_KEY = "slaflow.calibration_key"
TAG_RESULT = "slaflow.calibration"
#: A calibration older than this is measured again.
MAX_AGE_S = 7 * 86400


def calibration_key(**parts: Any) -> str:
    """Stable key of everything that changes throughput (cluster, data size, model, batch)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def find_calibration(client: Any, key: str, shape: str, now: float | None = None) -> dict | None:
    exp = client.get_experiment_by_name(CALIBRATION_EXPERIMENT)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TAG_KEY}` = '{key}' and tags.`slaflow.shape` = '{shape}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs or TAG_RESULT not in runs[0].data.tags:
        return None
    result: dict[str, Any] = json.loads(runs[0].data.tags[TAG_RESULT])
    if (now or time.time()) - float(result.get("measured_at", 0)) > MAX_AGE_S:
        return None
    result["source"] = f"calibration run {runs[0].info.run_id[:8]}"
    return result


def merge_calibrations(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """A stored calibration with newly measured worker counts added (the new ones win; the
    start-up cost is the largest seen)."""
    if not old:
        return dict(new)
    return {
        **old,
        **new,
        "epoch_s": {**old["epoch_s"], **new["epoch_s"]},
        "startup_s": max(float(old["startup_s"]), float(new["startup_s"])),
    }


def save_calibration(
    client: Any,
    key: str,
    result: dict[str, Any],
    artifact_location: str | None,
    parts: dict[str, Any],
) -> str:
    from mlflow_config.registry import get_or_create_experiment

    exp_id = get_or_create_experiment(client, CALIBRATION_EXPERIMENT, artifact_location)
    run = client.create_run(
        exp_id,
        run_name=f"calibration {result['shape']} {key[:8]}",
        tags={TAG_KEY: key, "slaflow.shape": result["shape"], TAG_RESULT: json.dumps(result)},
    )
    from mlflow.entities import Metric, Param

    ts = int(time.time() * 1000)
    metrics = [
        Metric(f"epoch_s_{n}_workers", float(v), ts, 0) for n, v in result["epoch_s"].items()
    ]
    metrics.append(Metric("startup_s", float(result["startup_s"]), ts, 0))
    client.log_batch(
        run.info.run_id, metrics=metrics, params=[Param(k, str(v)[:500]) for k, v in parts.items()]
    )
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def past_curves(
    client: Any, experiment_name: str, key: str, learning_rate: float, limit: int = 5
) -> list[list[float]]:
    """Validation-accuracy curves of the latest finished runs with the same key."""
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        return []
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TAG_KEY}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    curves = []
    for run in runs:
        if run.data.params.get("learning_rate") != str(learning_rate):
            continue
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        by_step: dict[int, float] = {}
        for m in history:
            by_step[m.step] = m.value
        if by_step:
            curves.append([by_step[s] for s in sorted(by_step)])
        if len(curves) >= limit:
            break
    return curves
