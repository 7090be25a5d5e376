"""Submit-or-attach runner for Ray Jobs, shared by the operators that run code on Ray.

Submission ids are deterministic (from the DAG run and task), so an Airflow retry attaches to
the job its first try started instead of starting a second one: a running job is followed, a
succeeded job's result is read back, and only a failed or stopped job is resubmitted, under
the next id (``<base>-a1``, ``-a2``...; Ray rejects a reused id). The job's input is a JSON
file written next to the other submissions' under ``spec_dir`` (shared storage), named by the
submission id; the job finds it through ``SLAFLOW_JOB_SPEC_URI``. The entrypoint is a
constant string.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from typing import Any

from ray_jobs.entry import SPEC_URI_ENV, parse_error, parse_result, write_spec

_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class RayJobFailed(RuntimeError):
    """The Ray Job ended without a result; the message carries the job's own error."""


def submission_base_id(stage: str, dag_id: str, run_id: str) -> str:
    """A Ray-safe, deterministic id for one stage of one DAG run."""
    raw = f"{dag_id}-{run_id}"
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-")[:60]
    digest = hashlib.sha1(raw.encode()).hexdigest()[:10]
    return f"slaflow-{stage}-{slug}-{digest}"


class RayJobRunner:
    def __init__(self, client: Any, log: Callable[[str], None], spec_dir: str) -> None:
        self._client = client
        self._log = log
        self._spec_dir = spec_dir.rstrip("/")

    def _status(self, submission_id: str) -> str | None:
        try:
            return str(self._client.get_job_info(submission_id).status)
        except Exception:  # the Job API answers 404 through a RuntimeError
            return None

    def pick_submission(self, base_id: str) -> tuple[str, str | None]:
        """The id to follow or submit, and the status of the job already under it (or None)."""
        attempt = 0
        while True:
            sid = base_id if attempt == 0 else f"{base_id}-a{attempt}"
            status = self._status(sid)
            if status is None or status not in ("FAILED", "STOPPED"):
                return sid, status
            attempt += 1

    def run(
        self,
        *,
        base_id: str,
        module: str,
        spec: dict[str, Any],
        timeout_s: float,
        env_vars: dict[str, str] | None = None,
        poll_s: float = 0.5,
    ) -> dict[str, Any]:
        sid, status = self.pick_submission(base_id)
        if status is None:
            spec_uri = f"{self._spec_dir}/{sid}.json"
            write_spec(spec_uri, spec)
            self._client.submit_job(
                entrypoint=f"python -m {module}",
                submission_id=sid,
                runtime_env={"env_vars": {SPEC_URI_ENV: spec_uri, **(env_vars or {})}},
                metadata={"slaflow_stage": base_id.split("-")[1]},
            )
            self._log(f"Submitted Ray job {sid} ({module})")
        else:
            self._log(f"Ray job {sid} already exists ({status}): attaching instead of resubmitting")
        self.last_submission_id = sid
        status = self._follow(sid, timeout_s, poll_s)
        logs = self._client.get_job_logs(sid)
        if status == "SUCCEEDED":
            result = parse_result(logs)
            if result is None:
                raise RayJobFailed(f"Ray job {sid} succeeded but printed no result line")
            return result
        error = parse_error(logs)
        detail = f"{error['type']}: {error['message']}" if error else logs[-2000:]
        raise RayJobFailed(f"Ray job {sid} ended {status}: {detail}")

    def _follow(self, sid: str, timeout_s: float, poll_s: float) -> str:
        """Stream new log lines until the job ends; stop it if it outlives ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        shown = 0
        last_line = None
        while True:
            status = self._status(sid) or "UNKNOWN"
            logs = self._client.get_job_logs(sid)
            for line in logs[shown:].splitlines():
                # Ray echoes worker prints twice (worker log + driver); show each line once.
                if line.strip() and line != last_line and not line.startswith("SLAFLOW_"):
                    self._log(line)
                last_line = line
            shown = len(logs)
            if status in _TERMINAL:
                return status
            if time.monotonic() > deadline:
                self.stop(sid)
                raise RayJobFailed(f"Ray job {sid} exceeded {timeout_s:.0f}s and was stopped")
            time.sleep(poll_s)

    def stop(self, sid: str) -> None:
        try:
            self._client.stop_job(sid)
            self._log(f"Stopped Ray job {sid}")
        except Exception as exc:  # already gone
            self._log(f"Could not stop Ray job {sid}: {exc}")
