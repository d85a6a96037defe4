"""``pybpfmap stress``: map updates from inside spin_unlock, under load — does
the kernel stay up, and is every error explained?

Where it runs:

* ``--kernel K``, or a host without kprobes: inside the test VM (the VM
  runner boots image K; the guest runs ``stress --in-guest``), and the
  runner's outcome (hang, panic, splats) is merged into the verdict;
* ``--tracepoints`` without ``--kernel``: here, the weaker tracepoint variant;
* otherwise here, with kprobes.

Running here needs a VM (a hang on a workstation loses work) unless
``--force``.  Exit status: 0 PASS, 1 FAIL (or a kernel refusal), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pybpfmap.errors import EXIT_KERNEL, EnvironmentProblem, UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stress", help="hash map ops from kprobes on spin_unlock under load: deadlock check",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, metavar="S",
                   help="seconds of workload with the probes attached (default 10)")
    p.add_argument("--probes", nargs="+", metavar="NAME",
                   help="spin_unlock functions (or, with --tracepoints, category:name "
                        "tracepoints); default: every one that can be probed")
    p.add_argument("--types", nargs="+", metavar="TYPE",
                   help="map types (hash, percpu_hash, lru_hash, lru_percpu_hash) or labels "
                        "(hash/no_prealloc); default: all six")
    p.add_argument("--kernel", metavar="K",
                   help="run inside the test VM with this image (bookworm, trixie)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--force", action="store_true",
                   help="run here even though this machine is not a VM")
    p.add_argument("--tracepoints", action="store_true",
                   help="weaker variant for kernels without kprobes: attach to "
                        "lock:contention_begin/end and kmem:kmalloc/kfree instead")
    p.add_argument("--heartbeat-limit", type=float, default=5.0, metavar="S",
                   help="FAIL if the heartbeat is ever later than this (default 5)")
    p.add_argument("--baseline", type=float, metavar="S",
                   help="seconds of workload without probes, for the throughput "
                        "comparison (default: duration/4, 1 to 3 s)")
    p.add_argument("--inject", choices=("splat", "stall", "panic"),
                   help="negative control: make the run fail on purpose (a WARN line "
                        "in the kernel log, a stalled heartbeat, a guest panic)")
    p.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _options(args: argparse.Namespace):
    from pybpfmap.stress.run import Options

    if args.duration <= 0:
        raise UsageError("--duration", "must be more than 0 seconds")
    return Options(duration=args.duration, probes=args.probes, types=args.types,
                   tracepoints=args.tracepoints, heartbeat_limit=args.heartbeat_limit,
                   inject=args.inject, baseline=args.baseline)


def run(args: argparse.Namespace) -> int:
    from pybpfmap import kernel as kernel_probe
    from pybpfmap.headers import ensure_tracefs
    from pybpfmap.stress import report, verdict
    from pybpfmap.stress.programs import select_maps

    opts = _options(args)
    select_maps(opts.types)  # reject bad --types before booting anything
    if os.geteuid() != 0:
        raise EnvironmentProblem("permissions", "stress needs root (bpf(2), tracefs, "
                                 "network namespaces): run with sudo")
    ensure_tracefs()
    k = kernel_probe.probe()
    # --kernel always means the VM (also with --tracepoints); without it, the
    # tracepoint variant and, where there are kprobes, the real one run here.
    local = args.in_guest or (args.kernel is None and (opts.tracepoints or k.kprobes))
    if local:
        from pybpfmap.vm.guest import in_test_vm

        if not (k.in_vm or in_test_vm() or args.force):
            raise EnvironmentProblem("--force", "this machine is not a VM: a kernel hang "
                                     "here loses your work; run with --kernel K to use the "
                                     "test VM, or pass --force")
        from pybpfmap.stress.run import run_local

        result = run_local(opts, k)
    else:
        from pybpfmap.stress.via_vm import run_via_vm

        result = run_via_vm(opts, args.kernel or "bookworm")
    verdict.judge(result, opts.heartbeat_limit)
    if args.in_guest and os.environ.get("PYBPFMAP_RESULTS"):
        from pybpfmap.stress.via_vm import RESULT_FILE

        path = os.path.join(os.environ["PYBPFMAP_RESULTS"], RESULT_FILE)
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
        if not args.in_guest:
            report.print_report(result, sys.stderr)
    else:
        report.print_report(result, sys.stdout)
    return 0 if result["verdict"] == verdict.PASS else EXIT_KERNEL
