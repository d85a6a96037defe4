"""``report --merge``: report folders made separately (one per kernel, one per CI
job, repeat runs) joined into one.

Every part's sections are kept with the machine that ran them (its CPU model,
cores, host kernel and the guest's accelerator: :mod:`.machine`) and the run
they came from; the rendering groups them (:mod:`.pool`): repeat runs of one
machine pool, other machines stay apart.  Nothing is averaged here, so a
merged ``results.json`` can be merged again.  A section folder that two parts
share (``bench-host``) is copied as ``bench-host``, ``bench-host.2``...
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from pybpfmap.errors import EnvironmentProblem, UsageError
from pybpfmap.records import from_json
from pybpfmap.report.render import Report
from pybpfmap.report.run import SectionResult


def load(folder: Path) -> Report:
    """A report folder's ``results.json``."""
    path = folder / "results.json"
    try:
        return from_json(Report, json.loads(path.read_text()))
    except OSError as e:
        raise EnvironmentProblem("--merge", f"{path}: cannot read it", e.errno) from None
    except ValueError as e:
        raise UsageError("--merge", f"{path} is not a pybpfmap report: {e}") from None


def _free(folder: str, taken: set[str]) -> str:
    name, n = folder, 2
    while name in taken:
        name, n = f"{folder}.{n}", n + 1
    taken.add(name)
    return name


def merge(folders: list[Path], out: Path, command: str, generated: str) -> Report:
    """One report from several: their places in order of first mention, every
    section with its machine and run (the same section of the same run given
    twice, once)."""
    folders = list(dict.fromkeys(f.resolve() for f in folders))  # a folder given twice: once
    parts = [load(f) for f in folders]
    places: list[str] = []
    sections: list[SectionResult] = []
    seen: set[tuple] = set()
    taken: set[str] = set()
    for folder, part in zip(folders, parts, strict=True):
        places += [p for p in part.places if p not in places]
        for s in part.sections:
            run = s.run or f"{part.generated}, {folder.name}"
            if (s.key, s.machine, run) in seen:
                continue
            seen.add((s.key, s.machine, run))
            name = _free(s.folder, taken)
            src, dst = folder / s.folder, out / name
            if src.is_dir() and src.resolve() != dst.resolve():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            plots = [name + p[len(s.folder):] if p.startswith(s.folder + "/") else p
                     for p in s.plots]
            sections.append(dataclasses.replace(s, folder=name, plots=plots, run=run))
    return Report(generated, command, parts[0].host_release, places,
                  round(sum(p.seconds for p in parts), 1), sections)
