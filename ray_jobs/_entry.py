"""Entrypoint plumbing shared by the Ray Job scripts.

The job's input travels as JSON in the ``SLAFLOW_JOB_SPEC`` environment variable of the job's
runtime env, never on a command line, so no contract value reaches a shell string. The job's
answer is the last ``SLAFLOW_RESULT {json}`` line of its log; a failure prints
``SLAFLOW_ERROR {json}`` so the operator can show the message instead of a traceback dump.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

SPEC_ENV = "SLAFLOW_JOB_SPEC"
RESULT_PREFIX = "SLAFLOW_RESULT "
ERROR_PREFIX = "SLAFLOW_ERROR "


def run_entrypoint(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    try:
        spec = json.loads(os.environ[SPEC_ENV])
    except KeyError:
        sys.exit(f"{SPEC_ENV} is not set: run this module through the slaflow operators")
    try:
        result = fn(spec)
    except Exception as exc:  # reported to the operator, then the job fails
        traceback.print_exc()
        print(ERROR_PREFIX + json.dumps({"type": type(exc).__name__, "message": str(exc)}),
              flush=True)
        sys.exit(1)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def parse_result(logs: str) -> dict[str, Any] | None:
    """The job's result from its log, or None when it printed none."""
    for line in reversed(logs.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])  # type: ignore[no-any-return]
    return None


def parse_error(logs: str) -> dict[str, Any] | None:
    for line in reversed(logs.splitlines()):
        if line.startswith(ERROR_PREFIX):
            return json.loads(line[len(ERROR_PREFIX):])  # type: ignore[no-any-return]
    return None
