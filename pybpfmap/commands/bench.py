"""``pybpfmap bench``: the update -> lookup -> delete triple, timed on this kernel."""

from __future__ import annotations

import argparse
import json
import os
import sys

from pybpfmap.errors import KernelError, UsageError

DEFAULT_SIZES = "1000,10000,100000,1000000"


def _ints(param: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x.replace("_", "")) for x in text.split(",") if x)
    except ValueError:
        raise UsageError(param, f"{text!r} is not a comma-separated list of integers") \
            from None
    if not values or any(v <= 0 for v in values):
        raise UsageError(param, f"{text!r}: give positive integers")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    from pybpfmap.maps import TYPES

    p = sub.add_parser(
        "bench", help="time update/lookup/delete on each hash map type",
        description="Time one update -> lookup -> delete triple on a random key, in the "
                    "kernel (BPF_PROG_TEST_RUN) and/or triggered by a syscall "
                    "(samples/bpf/map_perf_test), per map type, allocation mode, CPU "
                    "count and max_entries.")
    p.add_argument("--mode", choices=("inkernel", "syscall", "both"), default="both",
                   help="inkernel: BPF_PROG_TEST_RUN; syscall: a program on getuid() "
                        "triggered by one pinned process per CPU (default: both)")
    p.add_argument("--types", nargs="+", choices=TYPES, default=list(TYPES), metavar="TYPE",
                   help=f"map types (default: all of {', '.join(TYPES)})")
    alloc = p.add_mutually_exclusive_group()
    alloc.add_argument("--prealloc", dest="alloc", action="store_const", const="prealloc",
                       help="preallocated maps only")
    alloc.add_argument("--no-prealloc", dest="alloc", action="store_const",
                       const="no_prealloc", help="BPF_F_NO_PREALLOC maps only")
    p.add_argument("--cpus", help="CPU counts, e.g. 1,2 (default: 1..nproc)")
    p.add_argument("--max-entries", default=DEFAULT_SIZES,
                   help=f"map sizes to sweep (default: {DEFAULT_SIZES})")
    p.add_argument("--runs", type=int, default=5, help="repeated runs (default: 5)")
    p.add_argument("--seconds", type=float, default=0.3,
                   help="measuring window per run and CPU count (default: 0.3)")
    p.add_argument("--triples", type=int, default=1,
                   help="triples per program run (default 1, as the seed; "
                        "map_perf_test since 2022 does 10)")
    p.add_argument("--trigger", choices=("auto", "kprobe", "tracepoint", "raw_tp"),
                   default="auto", help="syscall mode: what the program hangs on")
    p.add_argument("--kernel", metavar="SUITE",
                   help="run inside the test VM with this kernel (bookworm, trixie); "
                        "the syscall mode then uses a kprobe when the guest has kprobes")
    p.add_argument("--vm-cpus", type=int, default=2, help="vCPUs with --kernel (default 2)")
    p.add_argument("--results-dir", help="with --kernel: where the VM's files go "
                                         "(default results/bench-SUITE-TIME)")
    p.add_argument("--json", metavar="FILE", help="write the records as JSON (- for stdout)")
    p.add_argument("--plot", metavar="FILE", help="write PNG plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pybpfmap.bench import table
    from pybpfmap.bench.run import MODES, Options
    from pybpfmap.bench.run import run as bench_run
    from pybpfmap.output import Progress

    if args.runs < 1:
        raise UsageError("--runs", "at least 1")
    if not 0.01 <= args.seconds <= 60:
        raise UsageError("--seconds", "between 0.01 and 60")
    if not 1 <= args.triples <= 64:
        raise UsageError("--triples", "between 1 and 64")
    nproc = args.vm_cpus if args.kernel else len(os.sched_getaffinity(0))
    opts = Options(
        modes=MODES if args.mode == "both" else (args.mode,),
        types=tuple(dict.fromkeys(args.types)),
        prealloc={"prealloc": (True,), "no_prealloc": (False,)}.get(args.alloc, (True, False)),
        cpus=_ints("--cpus", args.cpus) if args.cpus else tuple(range(1, nproc + 1)),
        max_entries=_ints("--max-entries", args.max_entries),
        runs=args.runs, seconds=args.seconds, triples=args.triples, trigger=args.trigger)
    if args.kernel:
        from pybpfmap.bench import guest

        records = guest.run(args, opts.steps())
    else:
        progress = Progress(opts.steps())
        try:
            records = bench_run(opts, progress.step)
        finally:
            progress.done()
    if args.json:
        text = json.dumps(records, indent=1) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
    if args.plot:
        from pybpfmap.bench.plot import plot

        plot(records, args.plot)
    if args.json != "-":
        print(table.render(records))
    noisy = [r for r in records if r.get("cv_warning")]
    for r in noisy:
        alloc = "prealloc" if r["prealloc"] else "no_prealloc"
        print(f"pybpfmap bench: warning: {r['type']}/{alloc} {r['mode']} {r['cpus']} CPU "
              f"max_entries={r['max_entries']}: runs disagree, "
              f"cv {r['cv']:.1%} > 5%", file=sys.stderr)
    measured = [r for r in records if "refused" not in r]
    if not measured:
        first = records[0]["refused"]
        raise KernelError(first["param"], first["errno"],
                          f"nothing could be measured: {first['meaning']}")
    return 0
