"""``pybpfmap stress``: may a BPF program update hash maps from lock paths?

Scenarios (``--scenario``, default ``allocator``):

* ``allocator`` — the seed's: a program on every spin_unlock function that can
  take a kprobe does update -> lookup -> delete on one map, under lock-heavy
  workloads (``--tracepoints``: the weaker variant on lock/kmem tracepoints);
* ``reentry`` — a raw_tp program and a kprobe program update one key, the
  kprobe one while the other holds the bucket lock;
* ``nmi``, ``nmi-slot`` — a program in NMI context (nmi:nmi_handler, NMIs
  injected by the test VM's host) updates the key a raw_tp program holds, or
  a key of its bucket on another map_locked slot.

One row per (scenario, map kind): its outcome (PASS, DEADLOCK, REFUSED,
FAIL, SKIPPED), the kernel era's prediction (with its commits) and whether
they match.  Where it runs:

* ``--kernel K``, or a host without kprobes: inside the test VM, one boot per
  row (``--no-isolate``: one boot for all), with the VM runner's watchdog;
* ``--tracepoints`` without ``--kernel``: here, the weaker variant;
* otherwise here, with kprobes — only on a VM (``--force`` otherwise), and
  never what the era predicts to deadlock.

Exit status: 0 every row as predicted (no map kind deadlocks); 3 every row as
predicted, and some map kinds deadlock here (unsafe); 1 an outcome the era
does not predict, or a pybpfmap error; 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys

from pybpfmap.commands.args import (
    add_json,
    add_kernel,
    add_list,
    emit,
    host_only,
    non_negative_float,
    positive_float,
)
from pybpfmap.errors import EnvironmentProblem, UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    from pybpfmap.stress.inject import INJECTIONS
    from pybpfmap.stress.kinds import KINDS
    from pybpfmap.stress.nmi import DEFAULT_RATE
    from pybpfmap.stress.scenarios import SCENARIOS
    from pybpfmap.stress.verdict import DEFAULT_HEARTBEAT_LIMIT_S

    p = subparsers.add_parser(
        "stress", help="hash map ops from kprobes on spin_unlock, and re-entry: deadlock check",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # --scenario, --types, --isolate and --force are the host's: with --kernel it
    # decides them per boot (pybpfmap.stress.host).
    host_only(add_list(p, "--scenario", "--scenarios", dest="scenarios", valid=list(SCENARIOS),
                       metavar="S",
                       help=f"scenarios ({', '.join(SCENARIOS)}; default allocator)"))
    p.add_argument("--duration", type=positive_float, default=10.0, metavar="S",
                   help="seconds of each row with its probes attached (default 10)")
    add_list(p, "--probes", metavar="NAME",
             help="spin_unlock functions (or, with --tracepoints, category:name "
                  "tracepoints); default: every one that can be probed")
    host_only(add_list(p, "--types", metavar="KIND",
                       help="map types (hash, percpu_hash, lru_hash, lru_percpu_hash) or "
                            f"kinds ({', '.join(k.name for k in KINDS)}); default: every "
                            "kind"))
    add_kernel(p, "run")
    iso = p.add_mutually_exclusive_group()
    host_only(iso.add_argument("--isolate", dest="isolate", action="store_true", default=True,
                               help="with --kernel: one VM boot per row (default)"))
    host_only(iso.add_argument("--no-isolate", dest="isolate", action="store_false",
                               help="with --kernel: one VM boot for every row"))
    host_only(iso.add_argument("--isolate-risky", dest="isolate", action="store_const",
                               const=None, help="with --kernel: one VM boot for each row the "
                               "era predicts may deadlock, one for the others"))
    add_json(p)
    host_only(p.add_argument("--force", action="store_true",
                             help="run here even though this machine is not a VM (never "
                                  "what the era predicts to deadlock)"))
    p.add_argument("--tracepoints", action="store_true",
                   help="weaker variant for kernels without kprobes: attach to "
                        "lock:contention_begin/end and kmem:kmalloc/kfree instead")
    p.add_argument("--heartbeat-limit", type=positive_float,
                   default=DEFAULT_HEARTBEAT_LIMIT_S, metavar="S",
                   help="FAIL a row if its heartbeat is ever later than this "
                        "(default %(default)g)")
    p.add_argument("--baseline", type=non_negative_float, metavar="S",
                   help="seconds of workload without probes, for the throughput "
                        "comparison (default: duration/4, 1 to 3 s; 0: no comparison)")
    p.add_argument("--nmi-rate", type=positive_float, default=DEFAULT_RATE, metavar="HZ",
                   help="the nmi and nmi-slot scenarios: NMIs a second the host injects "
                        "into every vCPU (QMP inject-nmi; default %(default)g)")
    p.add_argument("--inject", choices=list(INJECTIONS),
                   help="negative control: make the run fail on purpose (a WARN line in "
                        "the kernel log, a stalled heartbeat, a guest panic)")
    p.set_defaults(func=run)


def _options(args: argparse.Namespace):
    from pybpfmap.stress import kinds
    from pybpfmap.stress.inject import INJECTIONS
    from pybpfmap.stress.run import Options
    from pybpfmap.stress.scenarios import SCENARIOS

    if args.duration <= 0:
        raise UsageError("--duration", "must be more than 0 seconds")
    return Options(scenarios=[SCENARIOS[name] for name in args.scenarios or ["allocator"]],
                   kinds=kinds.select(args.types),
                   duration=args.duration, probes=args.probes, tracepoints=args.tracepoints,
                   heartbeat_limit=args.heartbeat_limit,
                   inject=INJECTIONS[args.inject] if args.inject else None,
                   baseline=args.baseline, nmi_rate=args.nmi_rate)


def run(args: argparse.Namespace) -> int:
    from pybpfmap.stress import records

    opts = _options(args)  # bad --types, --duration... before anything is booted
    if os.geteuid() != 0:
        raise EnvironmentProblem("permissions", "stress needs root (bpf(2), tracefs, "
                                 "network namespaces): run with sudo")
    kernels = args.kernels
    if not kernels:
        from pybpfmap import kernel as kernel_probe
        from pybpfmap.tracefs import ensure_tracefs
        from pybpfmap.vm import catalog

        ensure_tracefs()
        k = kernel_probe.probe()
        if opts.tracepoints or k.kprobes:
            from pybpfmap.stress.run import check_safe_here, run_local

            check_safe_here(opts, k, args.force)
            runs = [run_local(opts, k)]
        else:
            print(f"pybpfmap stress: no kprobes here ({k.kprobes_reason}): running in the "
                  f"{catalog.DEFAULT} test VM", file=sys.stderr)
            kernels = [catalog.get(catalog.DEFAULT)]
    if kernels:
        from pybpfmap.stress.host import run_in_vm
        from pybpfmap.vm.run import results_folder

        runs = [run_in_vm(opts, kernel, args.guest_argv, args.isolate,
                          results_folder(args.results, "stress", kernel, len(kernels) > 1))
                for kernel in kernels]
    emit(args, runs, records.render_text)
    return max(r.exit_status() for r in runs)
