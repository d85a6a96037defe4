"""``pybpfmap report``: the answer across kernel eras — this machine, 5.10 and 6.1 in
the test VM — and the seed's claims checked per kernel, in report.md, plots and
results.json (about 15 min); with --full every command and scenario; or merge
report folders made separately into one report."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from pybpfmap.commands.args import OutputDir, add_kernel, add_list
from pybpfmap.errors import UsageError
from pybpfmap.vm import catalog

ERA_CONTRAST = ("bullseye", "bookworm")   # 5.10 and 6.1: the seed's deadlock, and its end


def register(sub: argparse._SubParsersAction) -> None:
    from pybpfmap.report.plan import SECTION_NAMES

    p = sub.add_parser("report", help="the whole picture: every command, one report folder",
                       description=__doc__)
    p.add_argument("--out", default="results/report", metavar="DIR", action=OutputDir,
                   help="folder for report.md, results.json and plots (default: %(default)s)")
    add_kernel(p, f"measure in these (default {','.join(ERA_CONTRAST)}; with --full or "
                  f"--quick {catalog.DEFAULT}, and only when this kernel has no kprobes)",
               results=False)
    p.add_argument("--no-vm", action="store_true", help="measure the host only")
    p.add_argument("--full", action="store_true",
                   help="every command and scenario (default: the era contrast and the "
                   "seed's claims, about 15 min)")
    p.add_argument("--quick", action="store_true",
                   help="the full report's commands with short runs (a few minutes)")
    add_list(p, "--only", valid=SECTION_NAMES, metavar="NAME",
             help=f"run only these sections ({', '.join(SECTION_NAMES)})")
    p.add_argument("--merge", nargs="+", metavar="DIR",
                   help="run nothing: merge these report folders (e.g. one per kernel) into "
                        "--out, with one across-kernels table; repeat runs of one machine "
                        "pool, other machines' figures stay apart")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pybpfmap.records import to_json
    from pybpfmap.report.render import draw_plots, render

    if args.merge and (args.kernels or args.only or args.quick or args.full or args.no_vm):
        raise UsageError("--merge", "merges finished reports: give no --kernel, --only, "
                         "--full, --quick or --no-vm with it")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = "pybpfmap " + " ".join(shlex.quote(a) for a in args.argv)
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if args.merge:
        from pybpfmap.report.merge import merge

        report = merge([Path(f) for f in args.merge], out, command, generated)
    else:
        report = _measure(args, out, command, generated)
    (out / "results.json").write_text(json.dumps(to_json(report), indent=1) + "\n")
    (out / "report.md").write_text(render(report, draw_plots(report, out)))
    failed = [s for s in report.sections if s.error]
    print(f"pybpfmap report: wrote {out}/report.md and results.json ({report.seconds} s; "
          f"{len(failed)} of {len(report.sections)} sections failed)", file=sys.stderr)
    return 1 if failed else 0


def _measure(args: argparse.Namespace, out: Path, command: str, generated: str):
    import dataclasses

    from pybpfmap import kernel
    from pybpfmap.report import machine
    from pybpfmap.report.plan import plan
    from pybpfmap.report.render import Report, place_accel
    from pybpfmap.report.run import run_all

    host = kernel.probe()
    full = args.full or args.quick
    # The default report: the era contrast, 5.10 beside 6.1; the full one: the
    # default test VM when this kernel has no kprobes.
    default = ([catalog.get(n) for n in ERA_CONTRAST] if not full else
               [] if host.kprobes else [catalog.get(catalog.DEFAULT)])
    kernels = [] if args.no_vm else (args.kernels or default)
    sections = [s for s in plan(kernels, args.quick, host.kprobes, host.in_vm, full)
                if not args.only or s.name.removesuffix("-from-bpf") in args.only]
    start = time.monotonic()
    results = run_all(sections, out)
    # The machine of each section, for --merge: this host, and for a test VM how
    # qemu ran it (as the place's records say: pybpfmap picks the accelerator).
    accel = {w: place_accel(results, w) for w in {s.where for s in results if s.where != "host"}}
    results = [dataclasses.replace(s, machine=machine.probe(accel.get(s.where)), run=generated)
               for s in results]
    return Report(generated, command, host.kernel_release,
                  ["host", *(k.name for k in kernels)], round(time.monotonic() - start, 1), results)
