"""Serving profiles and Serve-path overheads, kept in MLflow so they are reused.

Both live in the ``slaflow-serving-profiles`` experiment, one run per key: a profile's key is
everything its latencies depend on (``policies.profile_key``: architecture and weight
shapes, replica shapes, batch sizes, node type), an overhead's key the node type and the Serve
version. A version whose profile key was measured before reuses it in a second or two;
accuracies are never reused (the evaluate job measures them per version).
"""

from __future__ import annotations

import json
import time
from typing import Any

PROFILE_EXPERIMENT = "slaflow-serving-profiles"
TAG_KIND = "slaflow.kind"
TAG_KEY = "slaflow.profile_key"
TAG_DOC = "slaflow.profile"
#: A stored measurement older than this is measured again (nodes and versions change).
MAX_AGE_S = 7 * 86400


def _find(client: Any, kind: str, key: str, now: float | None) -> dict[str, Any] | None:
    exp = client.get_experiment_by_name(PROFILE_EXPERIMENT)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TAG_KIND}` = '{kind}' and tags.`{TAG_KEY}` = '{key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs or TAG_DOC not in runs[0].data.tags:
        return None
    doc: dict[str, Any] = json.loads(runs[0].data.tags[TAG_DOC])
    if (now or time.time()) - float(doc.get("measured_at", 0)) > MAX_AGE_S:
        return None
    doc["source"] = f"{kind} run {runs[0].info.run_id[:8]}"
    return doc


def _save(
    client: Any, kind: str, key: str, doc: dict[str, Any], artifact_location: str | None
) -> str:
    from mlflow_config.registry import get_or_create_experiment

    exp_id = get_or_create_experiment(client, PROFILE_EXPERIMENT, artifact_location)
    run = client.create_run(
        exp_id,
        run_name=f"{kind} {key[:8]}",
        tags={
            TAG_KIND: kind,
            TAG_KEY: key,
            TAG_DOC: json.dumps({**doc, "measured_at": time.time()}),
        },
    )
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def find_overhead(client: Any, key: str, now: float | None = None) -> dict[str, Any] | None:
    return _find(client, "overhead", key, now)


def save_overhead(
    client: Any, key: str, overhead: dict[str, Any], artifact_location: str | None
) -> str:
    return _save(client, "overhead", key, overhead, artifact_location)


def find_compute(client: Any, key: str, now: float | None = None) -> dict[str, Any] | None:
    """The compute samples stored under a profile key (``{"samples": [...], ...}``)."""
    return _find(client, "compute", key, now)


def save_compute(client: Any, key: str, doc: dict[str, Any], artifact_location: str | None) -> str:
    return _save(client, "compute", key, doc, artifact_location)
