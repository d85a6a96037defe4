"""``pybpfmap info``: what this kernel (or a test-VM kernel) can do for BPF hash map work."""

from __future__ import annotations

import argparse

from pybpfmap import kernel
from pybpfmap.commands.args import add_json, add_kernel, emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="kernel capabilities: kprobes, VM, headers, unlock symbols",
                       description=__doc__)
    add_json(p)
    add_kernel(p, "look")
    p.set_defaults(func=run)


def render_text(found: list[kernel.Kernel]) -> str:
    return "\n\n".join(kernel.render(k) for k in found) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.kernels:
        from pybpfmap.commands import invm
        from pybpfmap.vm.run import no_prealloc_tracing_splats

        # The guest's info asks the verifier about a NO_PREALLOC map in a tracing
        # program (pybpfmap.kfacts): 5.7-6.0 answers with a WARN, once per boot.
        found = invm.records(args, kernel.load, timeout=600,
                             expected_splats=no_prealloc_tracing_splats)
    else:
        found = [kernel.prepared_probe()]
    emit(args, found, render_text)
    return 0
