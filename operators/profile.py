"""The serving profile stage: what each variant, replica shape and batch size of the promoted
version costs in latency and capacity, measured on the cluster (or reused while nothing it
depends on changed), for the deploy stage's placement (``operators.serving``)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from operators.base import RayJobStageOperator
from policies import (
    ComputeSample,
    ServeOverhead,
    build_profile,
    capacity_check,
    node_key,
    profile_key,
)

PROFILE_ARTIFACT = "serving/profile.json"


class ProfileServingOperator(RayJobStageOperator):
    """The serving profile of the promoted version, for the placement planner.

    Latency per variant, replica shape and batch size = the Serve path's overhead (measured
    once per node type, ``ServeHook.measure_overhead``) + the model's own compute (a Ray Job
    measuring it in-process, ``ray_jobs.profile_serving``). Both are stored in MLflow and
    reused while nothing they depend on changed (``policies.profile_key``); accuracies come
    from the evaluate task, per version. Logged as ``serving/profile.json`` on the run and
    linked from the version's ``slaflow.serving.profile`` tag. Skips when this run promoted
    nothing. A retry reuses what the first try stored.
    """

    template_fields: Sequence[str] = ("plan", "train", "evaluation", "promotion")

    def __init__(self, *, train: Any, evaluation: Any, promotion: Any, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "none_failed")
        super().__init__(**kwargs)
        self.train, self.evaluation, self.promotion = train, evaluation, promotion

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import profiles
        from mlflow_config import registry as reg
        from ray_jobs.specs import profile_spec
        from slaflow import settings

        if not self.promotion or not self.promotion.get("promoted"):
            raise AirflowSkipException("this run promoted nothing: no serving profile needed")
        started = time.monotonic()
        contract, client = self.contract, self.mlflow.client
        version = str(self.promotion["model_version"])
        variants = dict(
            self.evaluation.get("variants")
            or {"full": {"accuracy": self.evaluation["test_score"], "size_bytes": 0}}
        )
        variant_uri = str(self.evaluation.get("variant_uri") or "")
        cpus, batches = settings.profile_cpus(), settings.profile_batches()
        resource = contract.serving_node_resource
        node = node_key(self.ray.alive_nodes(), resource)
        # A cluster with a GPU gets a one-GPU replica shape measured too, so the planner's
        # gpu tier has a measured point to win with.
        gpus = 1 if self.ray.cluster_resources().get("GPU", 0.0) >= 1 else 0
        key = profile_key(
            model_signature=str(self.evaluation.get("model_signature", "")),
            variants=sorted(variants),
            cpus=cpus,
            batches=batches,
            node=f"{node}+gpu" if gpus else node,
        )
        # the Serve path first: measured (once per node type) before the compute job, whose
        # processes would otherwise still be winding down while it is timed
        overhead = self._overhead(node, resource, min(cpus))
        stored = profiles.find_compute(client, key)
        if stored is not None:
            samples = stored["samples"]
            self.log.info(
                "Compute profile reused (%s, key %s): same architecture, weight "
                "shapes, replica shapes %s, batch sizes %s and node type",
                stored["source"],
                key,
                cpus,
                batches,
            )
        else:
            need = max(cpus)
            check = capacity_check(
                need_cpus=need,
                free_cpus=self.ray.free_cpus(),
                footprint=self.serve.footprint(),
                what=f"profiling a {need:g}-CPU replica",
            )
            if not check.fits:
                raise AirflowFailException(check.message)
            self.log.info(
                "No stored compute profile for key %s: measuring %s CPU x batch %s",
                key,
                cpus,
                batches,
            )
            out = self.run_job(
                context,
                "profile",
                "ray_jobs.profile_serving",
                profile_spec(
                    tracking_uri=self.mlflow.tracking_uri,
                    model_uri=f"models:/{contract.model_name}/{version}",
                    variant_uri=variant_uri,
                    cpus=cpus,
                    batches=batches,
                    resource=resource,
                    gpus=gpus,
                ),
                timeout_s=600,
            )
            samples = out["samples"]
            profiles.save_compute(
                client, key, {"samples": samples, "node_key": node}, self.mlflow.artifact_location
            )
        profile = build_profile(
            overhead,
            [ComputeSample.from_dict(s) for s in samples],
            accuracy={v: float(d["accuracy"]) for v, d in variants.items()},
            size_bytes={v: int(d.get("size_bytes", 0)) for v, d in variants.items()},
        )
        doc = {
            **profile.to_dict(),
            "variant_uri": variant_uri,
            "version": version,
            "profile_key": key,
            "node_key": node,
            "reused": stored is not None,
            "overhead": overhead.to_dict(),
        }
        run_id = self.train["mlflow_run_id"]
        client.log_dict(run_id, doc, PROFILE_ARTIFACT)
        uri = f"runs:/{run_id}/{PROFILE_ARTIFACT}"
        reg.record_serving_profile(client, contract.model_name, version, uri)
        for p in profile.points:
            self.log.info(
                "%s %.2g CPU batch %d: predicted p50 %.2f ms p99 %.2f ms, %.0f req/s",
                p.variant,
                p.num_cpus,
                p.max_batch_size,
                p.p50_ms,
                p.p99_ms,
                p.capacity_rps,
            )
        return {
            "profile": profile.to_dict(),
            "variant_uri": variant_uri,
            "version": version,
            "profile_uri": uri,
            "reused": stored is not None,
            "seconds": round(time.monotonic() - started, 2),
        }

    def _overhead(self, node: str, resource: str, num_cpus: float) -> ServeOverhead:
        """The Serve path's overhead on this node type: stored, or measured now (once)."""
        import ray

        from mlflow_config import profiles

        key = hashlib.sha256(f"{node}|{resource}|{ray.__version__}".encode()).hexdigest()[:24]
        stored = profiles.find_overhead(self.mlflow.client, key)
        if stored is not None:
            self.log.info(
                "Serve path overhead reused (%s): p50 %.2f ms, %.0f req/s",
                stored["source"],
                stored["p50_ms"],
                stored["capacity_rps"],
            )
            return ServeOverhead.from_dict(stored)
        measured = self.serve.measure_overhead(num_cpus=num_cpus, resource=resource)
        measured = ServeOverhead(**{**measured.to_dict(), "node_key": node})
        profiles.save_overhead(
            self.mlflow.client, key, measured.to_dict(), self.mlflow.artifact_location
        )
        self.log.info(
            "Serve path overhead measured on this node type: p50 %.2f ms, p99 %.2f "
            "ms, %.0f req/s, cold start %.1fs",
            measured.p50_ms,
            measured.p99_ms,
            measured.capacity_rps,
            measured.cold_start_s,
        )
        return measured
