"""The figures of the fault and fuzz tests (issue 18, ``make chaos``): what each one tried and
what came of it, written as JSON when the session ends.

A test marked ``chaos`` calls :func:`tally` once per input it tried (a fuzzed body, a random
contract: the outcome, e.g. the HTTP status) and :func:`record` once with what it measured
after a fault (requests sent and failed, epochs lost, whether ``champion`` equals the served
version). ``pytest_sessionfinish`` in ``tests/conftest.py`` joins them with each chaos test's
outcome and writes ``test-artifacts/reliability.json`` (``SLAFLOW_RELIABILITY_OUT`` to move
it; ``make chaos`` writes ``benchmarks/results/reliability.json``). A record only says what
the test measured; whether the fault was survived is the test's outcome, since every figure
in it is also asserted.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_TALLIES: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
_RECORDS: dict[str, list[dict[str, Any]]] = defaultdict(list)


def test_key(nodeid: str) -> str:
    """A test's id without its parameters: a parametrized test's cases are one entry."""
    return nodeid.split("[", 1)[0]


def current_test() -> str:
    # "<nodeid> (call)"; a parametrized id may hold spaces
    return test_key(os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0])


def tally(target: str, outcome: int | str) -> None:
    """One input tried against ``target`` and its outcome (an HTTP status or a word)."""
    _TALLIES[(current_test(), target)][str(outcome)] += 1


def record(fault: str, **measured: Any) -> None:
    """What the current test measured once ``fault`` was injected."""
    _RECORDS[current_test()].append({"fault": fault, **measured})


def _is_server_error(outcome: str) -> bool:
    return outcome.isdigit() and int(outcome) >= 500


def _is_wrong(outcome: str) -> bool:
    """An outcome no input may get: a 5xx, a crash, the form and Python disagreeing."""
    return _is_server_error(outcome) or outcome.startswith("crashed") or outcome == "disagree"


def report(outcomes: dict[str, str]) -> dict[str, Any] | None:
    """The JSON document of this session's chaos tests (``outcomes``: test id -> passed,
    failed, skipped); None when no chaos test ran."""
    if not outcomes and not _TALLIES and not _RECORDS:
        return None
    fuzz = [
        {
            "test": test,
            "target": target,
            "tried": sum(counts.values()),
            "outcomes": dict(sorted(counts.items())),
            "server_errors": sum(n for o, n in counts.items() if _is_server_error(o)),
            "wrong_outcomes": sum(n for o, n in counts.items() if _is_wrong(o)),
            "test_outcome": outcomes.get(test, "not run"),
        }
        for (test, target), counts in sorted(_TALLIES.items())
    ]
    faults = [
        {**entry, "test": test, "survived": outcomes.get(test) == "passed"}
        for test, entries in sorted(_RECORDS.items())
        for entry in entries
    ]
    recorded = {f["test"] for f in faults} | {f["test"] for f in fuzz}
    silent = sorted(t for t in outcomes if t not in recorded)
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        rev = ""
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": rev,
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "totals": {
            "inputs_tried": sum(f["tried"] for f in fuzz),
            "server_errors": sum(f["server_errors"] for f in fuzz),
            "wrong_outcomes": sum(f["wrong_outcomes"] for f in fuzz),
            "faults_injected": len(faults),
            "faults_survived": sum(f["survived"] for f in faults),
            "requests_sent_during_faults": sum(int(f.get("requests_sent", 0)) for f in faults),
            "requests_failed_during_faults": sum(int(f.get("requests_failed", 0)) for f in faults),
            "champion_not_served_after_a_fault": sum(
                f.get("champion_equals_served") is False for f in faults
            ),
            "duplicated_versions": sum(int(f.get("duplicated_versions", 0)) for f in faults),
            "chaos_tests": dict(Counter(outcomes.values())),
        },
        "fuzz": fuzz,
        "faults": faults,
        "chaos_tests_without_figures": silent,
    }


def write(outcomes: dict[str, str]) -> Path | None:
    doc = report(outcomes)
    if doc is None:
        return None
    from tests.conftest import ARTIFACTS

    out = Path(os.environ.get("SLAFLOW_RELIABILITY_OUT", "") or ARTIFACTS / "reliability.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return out
