"""How a Ray Job gets its input and gives its answer.

The operator writes the job's spec as a JSON file on storage every node reaches (the shared
``SLAFLOW_DATA_DIR``: a path or an ``s3://`` URI) and passes only its location in the job's
``SLAFLOW_JOB_SPEC_URI`` environment variable; the entrypoint is a constant string. So no
contract value reaches a shell string, and a spec of any size (a data profile with thousands
of features) travels. The job's answer is the last ``SLAFLOW_RESULT {json}`` line of its log;
a failure prints ``SLAFLOW_ERROR {json}`` so the operator shows the message, not a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

SPEC_URI_ENV = "SLAFLOW_JOB_SPEC_URI"
RESULT_PREFIX = "SLAFLOW_RESULT "
ERROR_PREFIX = "SLAFLOW_ERROR "


def _fs(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in uri and not uri.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path
    return pafs.LocalFileSystem(), uri[len("file://") :] if uri.startswith("file://") else uri


def write_spec(uri: str, spec: dict[str, Any]) -> None:
    """Write a job spec where the job's driver will read it (parent folders created)."""
    fs, path = _fs(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(json.dumps(spec).encode())


def read_spec(uri: str) -> dict[str, Any]:
    fs, path = _fs(uri)
    with fs.open_input_stream(path) as fh:
        out: dict[str, Any] = json.loads(fh.read())
    return out


def run_entrypoint(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    uri = os.environ.get(SPEC_URI_ENV)
    if not uri:
        sys.exit(f"{SPEC_URI_ENV} is not set: run this module through the slaflow operators")
    try:
        spec = read_spec(uri)
    except (OSError, ValueError) as exc:
        sys.exit(
            f"cannot read the job spec at {uri} ({exc}): is SLAFLOW_DATA_DIR storage that "
            f"every Ray node reaches?"
        )
    try:
        result = fn(spec)
    except Exception as exc:  # reported to the operator, then the job fails
        traceback.print_exc()
        print(
            ERROR_PREFIX + json.dumps({"type": type(exc).__name__, "message": str(exc)}), flush=True
        )
        sys.exit(1)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def parse_result(logs: str) -> dict[str, Any] | None:
    """The job's result from its log, or None when it printed none."""
    for line in reversed(logs.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])  # type: ignore[no-any-return]
    return None


def parse_error(logs: str) -> dict[str, Any] | None:
    for line in reversed(logs.splitlines()):
        if line.startswith(ERROR_PREFIX):
            return json.loads(line[len(ERROR_PREFIX) :])  # type: ignore[no-any-return]
    return None
