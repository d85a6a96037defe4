"""``pybpfmap info``: what this kernel (or a test-VM kernel) can do for BPF hash map work."""

from __future__ import annotations

import argparse
import os

from pybpfmap import kernel
from pybpfmap.commands.args import add_json, add_kernel
from pybpfmap.errors import PybpfmapError
from pybpfmap.headers import ensure_headers
from pybpfmap.output import print_json
from pybpfmap.records import from_json
from pybpfmap.tracefs import ensure_tracefs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="kernel capabilities: kprobes, VM, headers, unlock symbols",
                       description=__doc__)
    add_json(p)
    add_kernel(p, "look")
    p.set_defaults(func=run)


def local() -> kernel.Kernel:
    """Mount tracefs, link headers, raise RLIMIT_MEMLOCK where the kernel charges
    it (as root), then probe; what could not be set up is in ``problems``."""
    from pybpfmap import memlock

    problems = []
    if os.geteuid() != 0:
        problems.append("not root: tracefs, headers and RLIMIT_MEMLOCK were not set up "
                        "(run with sudo)")
    else:
        for step in (ensure_tracefs, ensure_headers, memlock.ensure_unlimited):
            try:
                step()
            except PybpfmapError as e:
                problems.append(e.message())
    k = kernel.probe()
    k.problems = problems
    return k


def load(data: dict | list) -> list[kernel.Kernel]:
    """``info --json``'s document: one kernel, or (with --kernel) a list."""
    return [from_json(kernel.Kernel, d) for d in (data if isinstance(data, list) else [data])]


def render_markdown(records: list[kernel.Kernel]) -> str:
    return "\n".join(kernel.markdown(k) for k in records)


def run(args: argparse.Namespace) -> int:
    if args.kernels:
        from pybpfmap.vm.relay import documents

        found = [k for doc in documents(args, timeout=600) for k in load(doc)]
    else:
        found = [local()]
    if args.json:
        print_json(found[0] if len(found) == 1 and not args.kernels else found)
    else:
        print("\n\n".join(kernel.render(k) for k in found))
    return 0
