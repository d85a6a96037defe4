"""``pybpfmap report``: run info, maps, bench, stress and bcc-compare (in the test VM
where kprobes are needed) and write report.md, plots and results.json; or merge
report folders made separately into one report."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from pybpfmap.commands.args import OutputDir, add_kernel, add_list
from pybpfmap.errors import EnvironmentProblem, UsageError
from pybpfmap.vm import catalog


def register(sub: argparse._SubParsersAction) -> None:
    from pybpfmap.report.plan import SECTION_NAMES

    p = sub.add_parser("report", help="the whole picture: every command, one report folder",
                       description=__doc__)
    p.add_argument("--out", default="results/report", metavar="DIR", action=OutputDir,
                   help="folder for report.md, results.json and plots (default: %(default)s)")
    add_kernel(p, f"for the kprobe parts (default: {catalog.DEFAULT} when this kernel has "
                  "no kprobes)", results=False)
    p.add_argument("--no-vm", action="store_true", help="measure the host only")
    p.add_argument("--quick", action="store_true", help="short runs (a few minutes)")
    add_list(p, "--only", valid=SECTION_NAMES, metavar="NAME",
             help=f"run only these sections ({', '.join(SECTION_NAMES)})")
    p.add_argument("--merge", nargs="+", metavar="DIR",
                   help="run nothing: merge these report folders (e.g. one per kernel) into "
                        "--out, with one across-kernels table")
    p.set_defaults(func=run)


def _load(folder: str):
    from pybpfmap.records import from_json
    from pybpfmap.report.render import Report

    path = Path(folder) / "results.json"
    try:
        return from_json(Report, json.loads(path.read_text()))
    except OSError as e:
        raise EnvironmentProblem("--merge", f"{path}: cannot read it", e.errno) from None
    except ValueError as e:
        raise UsageError("--merge", f"{path} is not a pybpfmap report: {e}") from None


def merge(folders: list[str], out: Path, command: str):
    """One report from several: their sections, places in order of first mention."""
    import shutil

    from pybpfmap.report.render import Report

    parts = [_load(f) for f in folders]
    places: list[str] = []
    sections = []
    for folder, part in zip(folders, parts, strict=True):
        for p in part.places:
            if p not in places:
                places.append(p)
        for s in part.sections:
            src = Path(folder) / s.folder
            dst = out / s.folder
            if src.resolve() != dst.resolve() and src.is_dir():
                if dst.exists():  # the same section from two folders: keep the first
                    continue
                shutil.copytree(src, dst)
            sections.append(s)
    seen, unique = set(), []
    for s in sections:
        if s.key not in seen:
            seen.add(s.key)
            unique.append(s)
    return Report(time.strftime("%Y-%m-%d %H:%M:%S %Z"), command, parts[0].host_release,
                  places, round(sum(p.seconds for p in parts), 1), unique)


def run(args: argparse.Namespace) -> int:
    from pybpfmap.records import to_json
    from pybpfmap.report.render import render

    if args.merge and (args.kernels or args.only or args.quick or args.no_vm):
        raise UsageError("--merge", "merges finished reports: give no --kernel, --only, "
                         "--quick or --no-vm with it")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = "pybpfmap " + " ".join(shlex.quote(a) for a in args.argv)
    report = merge(args.merge, out, command) if args.merge else _measure(args, out, command)
    (out / "results.json").write_text(json.dumps(to_json(report), indent=1) + "\n")
    (out / "report.md").write_text(render(report))
    failed = [s for s in report.sections if s.error]
    print(f"pybpfmap report: wrote {out}/report.md and results.json ({report.seconds} s; "
          f"{len(failed)} of {len(report.sections)} sections failed)", file=sys.stderr)
    return 1 if failed else 0


def _measure(args: argparse.Namespace, out: Path, command: str):
    from pybpfmap import kernel
    from pybpfmap.report.plan import plan
    from pybpfmap.report.render import Report
    from pybpfmap.report.run import run_all

    host = kernel.probe()
    default = [] if host.kprobes else [catalog.get(catalog.DEFAULT)]
    kernels = [] if args.no_vm else (args.kernels or default)
    sections = [s for s in plan(kernels, args.quick, host.kprobes, host.in_vm)
                if not args.only or s.name in args.only]
    start = time.monotonic()
    results = run_all(sections, out)
    return Report(time.strftime("%Y-%m-%d %H:%M:%S %Z"), command, host.kernel_release,
                  ["host", *(k.name for k in kernels)], round(time.monotonic() - start, 1), results)
