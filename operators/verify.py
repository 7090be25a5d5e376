"""The verify stage: real HTTP requests from the test set against the endpoint the deploy
stage left, judged by ``policies.verify_verdict`` (latency SLO, accuracy, a malformed request
refused). Every endpoint call goes through ``ServeHook``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from airflow.sdk.exceptions import AirflowFailException

from operators.base import PlannedStageOperator
from policies import (
    RunContract,
    percentile,
    verify_verdict,
)


class VerifyEndpointOperator(PlannedStageOperator):
    """Real HTTP requests from the test set against the endpoint, judged by
    ``policies.verify_verdict``: the latency SLO at the contract's percentile, answers as
    accurate as the served variant tested, a malformed request refused with a 4xx. The
    metrics, the histogram and the verdict with its reasons are recorded; a failed verdict
    fails the task with them. Read-only apart from that record.
    """

    template_fields: Sequence[str] = (
        "plan",
        "profile",
        "train",
        "evaluation",
        "registration",
        "promotion",
        "deployment",
    )

    def __init__(
        self,
        *,
        profile: Any,
        train: Any,
        evaluation: Any,
        registration: Any,
        promotion: Any,
        deployment: Any,
        requests_count: int = 200,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "none_failed")
        super().__init__(**kwargs)
        self.profile, self.train = profile, train
        self.evaluation, self.registration = evaluation, registration
        self.promotion, self.deployment = promotion, deployment
        self.requests_count = requests_count

    def execute(self, context: Any) -> dict[str, Any]:
        from mlflow_config import registry as reg

        contract, client = self.contract, self.mlflow.client
        summary: dict[str, Any] = {
            "contract": contract.to_dict(),
            "accuracy": self.evaluation.get("test_accuracy"),
            "target_metric": contract.target_metric,
            contract.target_metric: self.evaluation[f"test_{contract.target_metric}"],
            "deadline_met": self.train["deadline_met"],
            "training_seconds": round(self.train["training_seconds"], 2),
            "stop_reason": self.train["stop_reason"],
            "outcome": self.train.get("outcome"),
            "worker_seconds": round(self.train.get("worker_seconds", 0.0), 1),
            "resizes": self.train.get("resizes", 0),
            "mlflow_run_id": self.train["mlflow_run_id"],
            "model_name": contract.model_name,
            "model_version": self.registration["model_version"],
            "alias": self.promotion["alias"],
            "promoted": self.promotion["promoted"],
            "endpoint_url": None,
            "served_version": None,
            "verify_p50_ms": None,
            "verify_p99_ms": None,
            "verify_accuracy": None,
        }
        if not self.deployment:
            self.log.warning("Nothing deployed (no champion): endpoint not verified")
            return summary
        served = str(self.deployment["model_version"])
        record = reg.serving_record(client, contract.model_name, served) or {}
        plan = record.get("plan") or self.deployment.get("placement") or {}
        # Verify counts right answers: compare with the served version's test *accuracy* (the
        # plan's figure is the variant's score in the target metric, accuracy by default).
        expected = (
            float(plan.get("accuracy") or 0.0) if contract.target_metric == "accuracy" else 0.0
        ) or reg.version_test_accuracy(client, contract.model_name, served, "accuracy")
        latencies, correct, bad = self._probe(contract.model_name)
        verdict = verify_verdict(
            latencies_ms=latencies,
            correct=correct,
            slo_ms=contract.latency_slo_ms,
            percentile_q=contract.latency_percentile,
            expected_accuracy=expected,
            bad_request_status=bad,
            regression_rmse=self._regression_rmse(),
        )
        p99 = percentile(latencies, 99)
        summary.update(
            endpoint_url=self.deployment["endpoint_url"],
            served_version=served,
            verify_p50_ms=verdict.p50_ms,
            verify_p99_ms=round(p99, 3),
            verify_accuracy=verdict.served_accuracy,
            verify_requests=len(latencies),
            latency_slo_met=verdict.checks[0].passed,
            bad_request_status=bad,
            verify=verdict.to_dict(),
        )
        if plan.get("variant"):
            summary["placement"] = (
                f"{plan['variant']} on {plan['tier']}, {plan['num_cpus']:g} CPU x "
                f"{plan['min_replicas']}-{plan['max_replicas']} replicas"
                + (" (SLO autoscaler)" if plan["tier"] != "fixed" else "")
                + f", batch {plan['max_batch_size']}, queue {plan['max_queued_requests']}, "
                f"predicted p{plan['percentile']} {plan['predicted_tail_ms']:.1f} ms, "
                f"{plan['cost_per_hour']:.4f}/h"
            )
        reg.record_verify(
            client,
            model_name=contract.model_name,
            version=served,
            run_id=self.train["mlflow_run_id"],
            metrics={
                "verify_p50_ms": verdict.p50_ms,
                "verify_p99_ms": p99,
                "verify_accuracy": verdict.served_accuracy,
            },
            verdict=verdict.to_dict(),
            figure=latency_plot(latencies, contract),
        )
        for reason in verdict.reasons:
            (self.log.info if not reason.startswith("FAIL") else self.log.error)(
                "verify: %s", reason
            )
        if not verdict.passed:
            raise AirflowFailException(
                f"{contract.model_name} v{served} at {self.deployment['endpoint_url']} fails "
                f"its contract: " + "; ".join(r for r in verdict.reasons if r.startswith("FAIL"))
            )
        return summary

    def _regression_rmse(self) -> tuple[float, float] | None:
        """(served, tested) RMSE of a regression model's answers to the verify requests."""
        if self.profile.get("task") != "regression":
            return None
        values, truth = self._served_values
        served = float(np.sqrt(np.mean((np.asarray(values) - np.asarray(truth)) ** 2)))
        return served, float(self.evaluation["test_rmse"])

    def _probe(self, model: str) -> tuple[list[float], int, int]:
        """Sequential one-row requests from the test set; latencies, right answers, and the
        status a malformed body got."""
        from ray_jobs import data_io

        x, y = data_io.read_request_rows(
            self.profile["paths"]["test"], self.profile, limit=self.requests_count
        )
        classes = self.profile["classes"]
        n = min(self.requests_count, len(x))
        bad = self.serve.predict(model, [[1.0, 2.0]], timeout_s=10).status_code
        latencies, correct, values = [], 0, []
        for i in range(n):
            t0 = time.perf_counter()
            resp = self.serve.predict(model, [x[i]], timeout_s=10)
            latencies.append((time.perf_counter() - t0) * 1000)
            if resp.status_code != 200:
                raise AirflowFailException(
                    f"request {i} to {self.serve.url(model)} got HTTP "
                    f"{resp.status_code}: {resp.text[:500]}"
                )
            answer = resp.json()["predictions"][0]
            if classes:
                correct += answer == classes[int(y[i])]
            else:
                values.append(float(answer))
        self._served_values = (values, [float(v) for v in y[:n]])
        return latencies, correct, bad


def latency_plot(latencies_ms: list[float], contract: RunContract) -> Any:
    """Histogram of the verify requests' latency against the contract's SLO (a PNG in MLflow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(latencies_ms, bins=40, color="#4c72b0")
    p = percentile(latencies_ms, contract.latency_percentile)
    ax.axvline(
        contract.latency_slo_ms,
        color="red",
        linestyle="--",
        label=f"SLO {contract.latency_slo_ms:g} ms",
    )
    ax.axvline(p, color="black", linestyle=":", label=f"p{contract.latency_percentile} {p:.1f} ms")
    ax.set_xlabel("request latency (ms), real HTTP to Ray Serve")
    ax.set_ylabel("requests")
    ax.set_title(f"Endpoint check: {len(latencies_ms)} requests")
    ax.legend()
    fig.tight_layout()
    return fig
