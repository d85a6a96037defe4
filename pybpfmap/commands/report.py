"""``pybpfmap report``: run info, maps, bench, stress and bcc-compare (in the test VM
where kprobes are needed) and write report.md, plots and results.json."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from pybpfmap.errors import UsageError

KERNELS = ("bookworm", "trixie")
SECTION_NAMES = ("info", "maps", "info+maps", "bench", "stress", "bcc-compare")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="the whole picture: every command, one report folder",
                       description=__doc__)
    p.add_argument("--out", default="results/report", metavar="DIR",
                   help="folder for report.md, results.json and plots (default: %(default)s)")
    p.add_argument("--kernel", dest="kernels", action="append", metavar="K",
                   help=f"test-VM kernel for the kprobe parts, repeatable "
                   f"({', '.join(KERNELS)}; default: bookworm when this kernel has no kprobes)")
    p.add_argument("--no-vm", action="store_true", help="measure the host only")
    p.add_argument("--quick", action="store_true", help="short runs (about 3 minutes)")
    p.add_argument("--only", metavar="NAME[,NAME]",
                   help=f"run only these sections ({', '.join(SECTION_NAMES)})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pybpfmap import kernel
    from pybpfmap.report.plan import plan
    from pybpfmap.report.render import render
    from pybpfmap.report.run import run_all

    for k in args.kernels or []:
        if k not in KERNELS:
            raise UsageError("--kernel", f"unknown test-VM kernel {k!r}; choose from "
                             f"{', '.join(KERNELS)}")
    only = set(args.only.split(",")) if args.only else set(SECTION_NAMES)
    unknown = only - set(SECTION_NAMES)
    if unknown:
        raise UsageError("--only", f"unknown section(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(SECTION_NAMES)}")
    host = kernel.probe()
    kernels = [] if args.no_vm else (args.kernels or ([] if host.kprobes else ["bookworm"]))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sections = [s for s in plan(kernels, args.quick, host.kprobes) if s.name in only]
    start = time.monotonic()
    records = run_all(sections, out)
    for record in records:
        folder = out / record["folder"]
        record["plots"] = sorted(str(p.relative_to(out)) for p in folder.glob("*.png"))
    results = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "pybpfmap " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "host_release": host.kernel_release,
        "places": ["host", *kernels],
        "seconds": round(time.monotonic() - start, 1),
        "sections": records,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(render(results))
    failed = [r for r in records if r["error"]]
    print(f"pybpfmap report: wrote {out}/report.md and results.json "
          f"({results['seconds']} s; {len(failed)} of {len(records)} sections failed)",
          file=sys.stderr)
    return 1 if failed else 0
