"""``pybpfmap info``: what this kernel can do for BPF hash map work."""

from __future__ import annotations

import argparse
import os
import sys

from pybpfmap import kernel
from pybpfmap.errors import PybpfmapError
from pybpfmap.headers import ensure_headers, ensure_tracefs
from pybpfmap.output import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="kernel capabilities: kprobes, VM, headers, unlock symbols",
                       description=__doc__)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=run)


def _prepare() -> list[str]:
    """Mount tracefs and link headers if missing (as root); return problems."""
    problems = []
    if os.geteuid() != 0:
        return ["not root: tracefs and headers were not set up (run with sudo)"]
    for step in (ensure_tracefs, ensure_headers):
        try:
            step()
        except PybpfmapError as e:
            problems.append(e.message())
    return problems


def run(args: argparse.Namespace) -> int:
    problems = _prepare()
    k = kernel.probe()
    data = k.as_dict()
    data["problems"] = problems
    if args.json:
        print_json(data)
        return 0
    out = sys.stdout
    out.write(f"kernel release     {k.kernel_release}\n")
    out.write(f"root               {'yes' if k.root else 'no'}\n")
    out.write(f"in a VM            {'yes (' + k.virt + ')' if k.in_vm else 'no'}\n")
    out.write(f"kprobes            {'yes' if k.kprobes else 'no'}: {k.kprobes_reason}\n")
    out.write(f"tracefs            {'mounted' if k.tracefs else 'missing'}\n")
    hdr = k.headers
    out.write(f"headers            {hdr['target'] if hdr else 'none'}\n")
    if hdr:
        out.write(f"                   {hdr['note']}\n")
    stats = k.bpf_stats_enabled
    out.write("bpf_stats_enabled  " + (("on" if stats["enabled"] else "off (available)")
                                      if stats["available"] else stats["reason"]) + "\n")
    if not k.kprobes:
        out.write("unlock symbols     none: no kprobes on this kernel\n")
    else:
        out.write("unlock symbols     " + (", ".join(k.unlock_symbols) or "none") + "\n")
        for sym, why in k.unlock_unavailable.items():
            out.write(f"  not {sym}: {why}\n")
    for problem in problems:
        out.write(f"problem: {problem}\n")
    return 0
