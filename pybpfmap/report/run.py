"""Run a report's sections, each as its own process with a time limit.

A section past its limit gets SIGINT — the same as Ctrl-C, so the command's
own context managers detach its probes, unload its programs and maps, remove
its network namespaces and stop its VM — then SIGKILL after
:data:`GRACE` seconds if it is still there.  Its stdout is its JSON document.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pybpfmap import procs
from pybpfmap.report.machine import Machine
from pybpfmap.report.plan import Section

GRACE = 30.0


@dataclass
class SectionResult:
    """What one section did: its document (``data``) or why there is none."""

    name: str
    where: str
    scenario: str
    argv: list[str]
    folder: str
    budget: float
    seconds: float = 0.0
    status: int | None = None
    data: Any = None
    error: str | None = None
    stopped: bool = False          # stopped at its time limit
    plots: list[str] = field(default_factory=list)
    # Which machine and which run: a merge pools the sections of one machine
    # and keeps every other machine's apart (pybpfmap.report.pool).  None: a
    # results.json from before machines were recorded (an unknown machine).
    machine: Machine | None = None
    run: str = ""                  # the report that ran it: its time and folder

    @property
    def key(self) -> str:
        return f"{self.name}{'-' + self.scenario if self.scenario else ''}@{self.where}"


def _log(msg: str) -> None:
    print(f"pybpfmap report: {msg}", file=sys.stderr, flush=True)


def run_section(section: Section, out: Path, limit: float | None = None) -> SectionResult:
    """Run one section as ``python3 -m pybpfmap ...``; its result."""
    folder = out / section.folder
    folder.mkdir(parents=True, exist_ok=True)
    argv = [a.replace("{out}", str(folder)) for a in section.argv]
    res = SectionResult(section.name, section.where, section.scenario, argv,
                        section.folder, section.budget)
    limit = section.limit if limit is None else limit
    start = time.monotonic()
    stdout_path, stderr_path = folder / "stdout.txt", folder / "stderr.txt"
    # Its own process group (procs.Child: the default SIGINT disposition, which
    # a background job would not have), so Ctrl-C reaches it only through us.
    with open(stdout_path, "w") as out_f, open(stderr_path, "w") as err_f, \
            procs.Child([sys.executable, "-m", "pybpfmap", *argv], stdout=out_f,
                        stderr=err_f, stdin=subprocess.DEVNULL,
                        env=dict(os.environ, PYTHONUNBUFFERED="1")) as child:
        try:
            res.status = child.wait(limit)
        except subprocess.TimeoutExpired:
            res.stopped = True
            status = child.stop(GRACE)  # SIGINT, GRACE s, SIGKILL to what is left
            res.error = (f"stopped at its time limit of {limit:.0f} s (SIGINT; exit "
                         f"status {status})")
        except BaseException:  # Ctrl-C (or an error) here: stop the section as Ctrl-C would
            child.stop(GRACE)
            raise
    res.seconds = round(time.monotonic() - start, 1)
    text = stdout_path.read_text()
    if not res.stopped:
        try:
            res.data = json.loads(text) if text.strip() else None
        except ValueError as e:
            res.error = f"its output is not JSON: {e}"
        if res.data is None and res.error is None:
            res.error = _last_error(stderr_path) or f"no result (exit status {res.status})"
        elif res.status not in (0, None) and res.name != "stress":
            # stress exits 1 or 3 with a full result: its rows say why.
            res.error = _last_error(stderr_path) or f"exit status {res.status}"
    res.plots = sorted(str(p.relative_to(out)) for p in folder.glob("*.png"))
    return res


def _last_error(stderr_path: Path) -> str | None:
    """The line of a failed command's stderr that best says why: its last
    "pybpfmap ...: error:" line, else its last line that is not guest console
    output."""
    lines = [ln.strip() for ln in stderr_path.read_text(errors="replace").splitlines()
             if ln.strip() and not re.match(r"\s*\[\s*\d+\.\d+\]", ln)]
    for line in reversed(lines):
        if re.match(r"pybpfmap [\w-]+: error: ", line):
            return line
    return lines[-1] if lines else None


def run_all(sections: list[Section], out: Path) -> list[SectionResult]:
    """Run every section in order, with progress (and budget) on stderr."""
    results = []
    for n, section in enumerate(sections, 1):
        _log(f"[{n}/{len(sections)}] {section.key} (budget {section.budget:.0f} s) ...")
        res = run_section(section, out)
        state = "ok" if res.error is None else f"FAILED: {res.error}"
        _log(f"[{n}/{len(sections)}] {section.key}: {state} ({res.seconds} s of "
             f"{section.budget:.0f})")
        results.append(res)
    return results
