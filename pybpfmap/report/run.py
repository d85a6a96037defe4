"""Run a report's sections and collect their JSON into ``results.json``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from pybpfmap.report.plan import Section


def _log(msg: str) -> None:
    print(f"pybpfmap report: {msg}", file=sys.stderr, flush=True)


def run_section(section: Section, out: Path) -> dict:
    """Run one section as ``python3 -m pybpfmap ...``; return its record."""
    folder = out / section.key.replace("@", "-")
    folder.mkdir(parents=True, exist_ok=True)
    argv = [a.replace("{out}", str(folder)) for a in section.argv]
    cmd = [sys.executable, "-m", "pybpfmap", *argv]
    record: dict = {"name": section.name, "where": section.where, "argv": argv,
                    "folder": str(folder.relative_to(out)), "data": None, "error": None}
    start = time.monotonic()
    stderr_path = folder / "stderr.txt"
    try:
        with open(stderr_path, "w") as err:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                  timeout=section.timeout, stdin=subprocess.DEVNULL,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
        record["status"] = proc.returncode
        (folder / "stdout.txt").write_text(proc.stdout)
        record["data"] = _collect(section, folder, proc.stdout)
    except subprocess.TimeoutExpired:
        # subprocess.run killed it; the command's own context managers do not
        # get to run, but its VM runner and BCC objects die with the process.
        record["status"] = None
        record["error"] = f"did not finish within {section.timeout:.0f} s"
    except (ValueError, OSError) as e:
        record.setdefault("status", None)
        record["error"] = f"no JSON result: {e}"
    record["seconds"] = round(time.monotonic() - start, 1)
    if record["error"] is None and record["status"] not in (0, None):
        record["error"] = _last_error(stderr_path) or f"exit status {record['status']}"
    return record


def _collect(section: Section, folder: Path, stdout: str):
    if not section.json_files:
        # every command's --json puts only the JSON document on stdout
        return json.loads(stdout) if stdout.strip() else None
    found = {}
    for name in section.json_files:
        path = folder / name
        if path.exists():
            found[Path(name).stem] = json.loads(path.read_text())
    if len(section.json_files) == 1:
        return next(iter(found.values()), None)
    return found or None


def _last_error(stderr_path: Path) -> str | None:
    """The line of a failed command's stderr that best says why: its last line
    mentioning an error or a failure, else its last line that is not guest
    kernel console output."""
    lines = [ln.strip() for ln in stderr_path.read_text(errors="replace").splitlines()
             if ln.strip() and not re.match(r"\s*\[\s*\d+\.\d+\]", ln)]
    for line in reversed(lines):
        if re.search(r"error|fail", line, re.IGNORECASE):
            return line
    return lines[-1] if lines else None


def run_all(sections: list[Section], out: Path) -> list[dict]:
    """Run every section in order, with progress on stderr."""
    records = []
    for n, section in enumerate(sections, 1):
        _log(f"[{n}/{len(sections)}] {section.name} on {section.where} ...")
        record = run_section(section, out)
        state = "ok" if record["error"] is None else f"FAILED: {record['error']}"
        _log(f"[{n}/{len(sections)}] {section.name} on {section.where}: {state} "
             f"({record['seconds']} s)")
        records.append(record)
    return records
