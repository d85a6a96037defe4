"""``pybpfmap bcc-compare``: real BCC tools with preallocated vs BPF_F_NO_PREALLOC maps.

Each selected bpfcc tool runs under a workload that makes its probes fire,
in interleaved rounds of three windows: without any tool, with the tool as
shipped, with its ``BPF_HASH`` maps rewritten to ``BPF_F_NO_PREALLOC`` at load
time (the installed tool is never modified).  Both tool processes are loaded
once and their probes detached and re-attached between windows (see
:mod:`pybpfmap.bcc_compare.run`).  The maps' flags are read back from the
kernel, and the tool's normal output is checked.  Reported: each mode's cost
per event and the NO_PREALLOC - shipped difference, means over rounds with
95% confidence intervals; "no significant difference" when the interval spans
0; "not comparable" when the rewrite has nothing to change.
"""

from __future__ import annotations

import argparse

from pybpfmap.bcc_compare.result import FAILED, BccRecord, load, render_markdown, render_text
from pybpfmap.bcc_compare.tools import DEFAULT_TOOLS, TOOLS
from pybpfmap.commands.args import (
    add_json,
    add_kernel,
    add_list,
    emit,
    host_only,
    int_at_least,
    positive_float,
)

__all__ = ["load", "render_text", "render_markdown", "register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from pybpfmap.bcc_compare.compare import DEFAULT_DURATION, DEFAULT_RUNS

    p = subparsers.add_parser(
        "bcc-compare", help="BCC tools: shipped (preallocated) vs BPF_F_NO_PREALLOC maps",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Tools that need kprobes run in the test VM with --kernel, else here if "
               "this kernel has kprobes, else they are skipped with the reason.")
    # host-only: with --kernel, the host narrows --tools to those that need kprobes
    host_only(add_list(p, "--tools", dest="tools", valid=list(TOOLS), metavar="TOOL",
                       help=f"tools, comma- or space-separated, repeatable (default: all "
                            f"of {', '.join(DEFAULT_TOOLS)})"))
    p.add_argument("--duration", type=positive_float, default=DEFAULT_DURATION, metavar="S",
                   help=f"seconds per workload window (default {DEFAULT_DURATION:g})")
    p.add_argument("--runs", type=int_at_least(2), default=DEFAULT_RUNS, metavar="R",
                   help=f"rounds of (baseline, shipped, NO_PREALLOC) windows, at least 2 "
                        f"(default {DEFAULT_RUNS})")
    add_kernel(p, "run the tools that need kprobes")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pybpfmap.bcc_compare.compare import compare
    from pybpfmap.vm.run import no_prealloc_tracing_splats

    records: list[BccRecord] = compare(args.tools, args.duration, args.runs, args.kernels,
                                       args.guest_argv, args.results,
                                       expected_splats=no_prealloc_tracing_splats)
    emit(args, records, render_text)
    return 1 if any(r.status == FAILED for r in records) else 0
