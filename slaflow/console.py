"""What a person sees while ``make demo`` runs: one line per stage with its elapsed time and
a spinner while it runs, then the stage table and the summary; every log line goes to a file.

The DAG runs in a child process whose output (Airflow task logs, Ray and Spark) is written
to the log file and read here for the ``[progress]`` lines each stage operator logs; the
child writes the run's task results as JSON. ``verbose`` also echoes the logs live.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

PROGRESS = re.compile(
    r"\[progress\] (?P<dag>\S+) stage (?P<k>\d+)/(?P<n>\d+) (?P<task>\S+) "
    r"(?P<event>started|done in (?P<secs>[0-9.]+)s)"
)
SETUP = re.compile(r"\[slaflow\] (?P<msg>.+)")


class StageBoard:
    """The live view: a line per stage seen so far (spinner while it runs), and the setup
    line before the first stage. Renders as a rich renderable; ``plain`` prints events as
    lines instead (a log file or CI is no terminal)."""

    def __init__(self, console: Console, plain: bool) -> None:
        self.console, self.plain = console, plain
        self.started = time.monotonic()
        self.setup = "starting"
        self.stages: dict[str, dict[str, Any]] = {}
        self.total = 0

    def feed(self, line: str) -> None:
        m = PROGRESS.search(line)
        if m:
            task, k, n = m["task"], int(m["k"]), int(m["n"])
            self.total = n
            now = time.monotonic()
            for other in self.stages.values():  # a stage that never said "done" was skipped
                if other["state"] == "running" and other["name"] != task:
                    other.update(state="ended", took=now - other["t0"])
            if m["event"] == "started":
                self.stages[task] = {
                    "name": task,
                    "k": k,
                    "t0": now,
                    "state": "running",
                    "took": None,
                }
                if self.plain:
                    self.console.print(f"[{k:>2}/{n}] {task} ...")
            else:
                stage = self.stages.setdefault(task, {"name": task, "k": k, "t0": now})
                stage.update(state="done", took=float(m["secs"]))
                if self.plain:
                    self.console.print(f"[{k:>2}/{n}] {task} done in {float(m['secs']):.1f}s")
            return
        s = SETUP.search(line)
        if s and not self.stages:
            self.setup = s["msg"][:90]
            if self.plain:
                self.console.print(f"[setup] {self.setup}")

    def __rich__(self) -> Table:
        grid = Table.grid(padding=(0, 1))
        now = time.monotonic()
        if not self.stages:
            grid.add_row(
                Spinner("dots"),
                Text(f"setup: {self.setup}"),
                Text(f"{now - self.started:5.1f}s", style="dim"),
            )
        for st in sorted(self.stages.values(), key=lambda s: s["k"]):
            if st["state"] == "running":
                mark: Any = Spinner("dots")
                took = now - st["t0"]
            else:
                mark = Text("✓" if st["state"] == "done" else "·", style="green")
                took = st["took"] or 0.0
            grid.add_row(
                mark,
                Text(f"[{st['k']:>2}/{self.total}] {st['name']}"),
                Text(f"{took:5.1f}s", style="dim"),
            )
        return grid


def run_watched(cmd: Sequence[str], log_path: Path, *, verbose: bool, console: Console) -> int:
    """Run ``cmd`` with its output going to ``log_path`` (and to the terminal when
    ``verbose``), showing the stage board meanwhile; returns its exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    plain = verbose or not console.is_terminal
    board = StageBoard(console, plain)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
            errors="replace",
        )
        assert proc.stdout is not None
        if plain:
            _pump(proc.stdout, log, board, sys.stderr if verbose else None)
        else:
            with Live(board, console=console, refresh_per_second=8, transient=False):
                _pump(proc.stdout, log, board, None)
        return proc.wait()


def _pump(stream: IO[str], log: IO[str], board: StageBoard, echo: IO[str] | None) -> None:
    for line in stream:
        log.write(line)
        if echo is not None:
            echo.write(line)
        board.feed(line)
    log.flush()


def summary_table(outcome: dict[str, Any], stages: Sequence[str]) -> Table:
    """Stage, state and seconds of a finished run."""
    table = Table(
        title=f"ml_lifecycle {outcome['state']} in {outcome['wall_seconds']}s",
        title_justify="left",
        show_edge=False,
    )
    table.add_column("stage")
    table.add_column("state")
    table.add_column("seconds", justify="right")
    for stage in stages:
        t = outcome["tasks"].get(stage, {})
        state = str(t.get("state", "-"))
        style = "green" if "success" in state else "yellow" if "skip" in state else "red"
        secs = t.get("seconds")
        table.add_row(stage, Text(state, style=style), "-" if secs is None else f"{secs:.1f}")
    return table


def read_outcome(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None
