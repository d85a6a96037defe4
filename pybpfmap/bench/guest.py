"""``pybpfmap bench --kernel SUITE``: the same bench, run inside the test VM.

The guest runs ``python3 -m pybpfmap bench`` with the same options and writes
its records to ``$PYBPFMAP_RESULTS/bench.json``, which the VM runner
(:func:`pybpfmap.vm.run_in_vm`) brings back to the host.  Each record then
gets ``where: vm``, the suite and the runner's ``accel``: figures under TCG
are emulation figures, not hardware ones.  In the VM the syscall mode uses a
kprobe, as samples/bpf/map_perf_test does, when the guest kernel has kprobes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pybpfmap.errors import EnvironmentProblem, UsageError

RESULT = "bench.json"


def guest_argv(args: argparse.Namespace) -> list[str]:
    """The bench options to pass on to the guest (everything but output files)."""
    argv = ["--mode", args.mode, "--types", *args.types, "--max-entries", args.max_entries,
            "--runs", str(args.runs), "--seconds", str(args.seconds),
            "--triples", str(args.triples), "--trigger", args.trigger]
    if args.alloc:
        argv.append(f"--{args.alloc.replace('_', '-')}")
    if args.cpus:
        argv += ["--cpus", args.cpus]
    return argv


def run(args: argparse.Namespace, steps: int) -> list[dict]:
    """Run the bench in a fresh guest with ``args.kernel``; its records."""
    from pybpfmap.vm import SUITES, run_in_vm
    from pybpfmap.vm.guest import GUEST_RESULTS

    if args.kernel not in SUITES:
        raise UsageError("--kernel", f"unknown VM kernel {args.kernel!r}; "
                         f"choose from {', '.join(SUITES)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = Path(args.results_dir or f"results/bench-{args.kernel}-{stamp}")
    cmd = ["python3", "-m", "pybpfmap", "bench", *guest_argv(args),
           "--json", f"{GUEST_RESULTS}/{RESULT}"]
    # Wall time per step is about the same in the guest; BCC's compiles under
    # TCG are what is slow.
    r = run_in_vm(cmd, kernel=args.kernel, cpus=args.vm_cpus, results_dir=results,
                  stream=sys.stderr, timeout=900 + steps * (4 * args.seconds + 2))
    if r.outcome != "passed":
        raise EnvironmentProblem("--kernel", f"bench in the {args.kernel} VM: {r.outcome}: "
                                 f"{r.message} (console log: {r.console_path})")
    path = r.results_dir / RESULT
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EnvironmentProblem("--kernel", f"no bench records from the VM ({path}: {e})") \
            from None
    for rec in records:
        rec.update(where="vm", vm_suite=args.kernel, accel=r.accel)
        if r.kernel_release:
            rec["kernel"] = r.kernel_release
    return records
