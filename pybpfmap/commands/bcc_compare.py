"""``pybpfmap bcc-compare``: real BCC tools with preallocated vs non-preallocated maps."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bcc-compare", help="BCC tools: shipped (preallocated) vs BPF_F_NO_PREALLOC maps",
        description="Run installed bpfcc-tools (biolatency, runqlat, opensnoop, tcpconnect, "
                    "funclatency, tcplife, syscount) under a matching workload three ways: "
                    "without the tool, as shipped, and with its BPF_HASH maps rewritten to "
                    "BPF_F_NO_PREALLOC at load time. Map flags are read back from the kernel.",
        epilog="Tools needing kprobes run in the test VM with --kernel, else are skipped.")
    p.add_argument("--tools", nargs="+", metavar="TOOL",
                   help="tools to compare (default: all); comma-separated also accepted")
    p.add_argument("--duration", type=float, default=2.0,
                   help="seconds per workload measurement (default 2)")
    p.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--kernel", metavar="SUITE",
                   help="run kprobe-only tools in this test VM (bookworm, trixie)")
    p.add_argument("--json", action="store_true", help="print records as JSON")
    p.add_argument("--in-guest", metavar="WHERE", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _names(raw: list[str] | None) -> list[str] | None:
    if not raw:
        return None
    return [n for item in raw for n in item.split(",") if n]


def run(args: argparse.Namespace) -> int:
    from pybpfmap.bcc_compare import compare as cmp
    from pybpfmap.bcc_compare import report, tools

    names = _names(args.tools)
    if args.in_guest:
        cmp._check(args.duration, args.runs)
        recs = cmp.compare_here(tools.select(names), args.duration, args.runs,
                                args.in_guest)
        cmp.write_results(recs)
    else:
        if args.kernel is not None:
            from pybpfmap.vm import SUITES

            if args.kernel not in SUITES:
                from pybpfmap.errors import UsageError

                raise UsageError("--kernel", f"unknown VM kernel {args.kernel!r}; valid: "
                                 f"{', '.join(SUITES)}")
        recs = cmp.compare(names, args.duration, args.runs, args.kernel)
    if args.json:
        json.dump(recs, sys.stdout, indent=1)
        print()
    else:
        print(report.table(recs))
    return 1 if any(r["status"] == "failed" for r in recs) else 0
