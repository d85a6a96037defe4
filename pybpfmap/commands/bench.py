"""``pybpfmap bench``: the update -> lookup -> delete triple, timed and verified on this kernel."""

from __future__ import annotations

import argparse
import os
import sys

from pybpfmap.bench.options import Options
from pybpfmap.bench.program import KEYS
from pybpfmap.bench.record import BenchRecord, Mode, load, pre_no_ratio  # noqa: F401 (the API)
from pybpfmap.bench.table import render_markdown, render_text  # noqa: F401 (the API)
from pybpfmap.bench.triggers import TRIGGERS
from pybpfmap.commands.args import (
    OutputFile,
    add_json,
    add_kernel,
    add_list,
    emit,
    host_only,
    non_negative_float,
    number,
    positive_float,
    positive_int,
)
from pybpfmap.errors import KernelError, UsageError
from pybpfmap.guest import in_test_vm
from pybpfmap.maps import TYPES
from pybpfmap.output import Progress

DEFAULT_SIZES = (1000, 10000, 100000, 1000000)
PEER_SIZES = (1000,)   # map_perf_test's own MAX_ENTRIES
PEERS = ("map_perf_test", "htab-mem")
PEER_RUNS = 5          # under TCG one run's figure moves by 5-10%
# --mode's choices: each mode by its name, or both
MODES: dict[str, tuple[Mode, ...]] = {**{m.value: (m,) for m in Mode}, "both": tuple(Mode)}


def percent(text: str) -> int:
    """A percentage, 0..100, with or without ``%``."""
    return number(text.rstrip("%"), int, lambda v: 0 <= v <= 100, "a percentage (0..100)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="time update/lookup/delete on each hash map kind, verified",
        description="Time one update -> lookup -> delete triple per map kind, allocation "
                    "mode, CPU count, max_entries and fill: in the kernel "
                    "(BPF_PROG_TEST_RUN, with an independent second clock) and/or "
                    "triggered by a syscall (as samples/bpf/map_perf_test, which --peer "
                    "runs beside it).  Every run is verified: the program counts its own "
                    "runs and its failed map calls.")
    p.add_argument("--mode", choices=MODES,
                   help="inkernel: BPF_PROG_TEST_RUN; syscall: a program on getuid() "
                        "triggered by one pinned process per CPU (default: both; with "
                        "--peer: syscall)")
    add_list(p, "--types", "--type", dest="types", valid=TYPES, metavar="TYPE",
             help=f"map types, comma- or space-separated (default: all of {', '.join(TYPES)}; "
                  "with --peer: hash,percpu_hash, the peer's)")
    alloc = p.add_mutually_exclusive_group()
    alloc.add_argument("--prealloc", dest="alloc", action="store_const", const=(True,),
                       help="preallocated maps only")
    alloc.add_argument("--no-prealloc", dest="alloc", action="store_const", const=(False,),
                       help="BPF_F_NO_PREALLOC maps only")
    add_list(p, "--cpus", convert=positive_int, metavar="K",
             help="CPU counts, e.g. 1,2 (default: 1..the CPUs this process may use)")
    add_list(p, "--max-entries", convert=positive_int, metavar="N",
             help="map sizes to sweep (default: 1000,10000,100000,1000000; with --peer: "
                  "the peer's: 1000 for map_perf_test, max(8192, 64 x CPUs) for htab-mem)")
    add_list(p, "--fill", dest="fills", convert=percent, metavar="PERCENT",
             help="preload this percentage of max_entries with resident keys, disjoint "
                  "from the triple's (the map gets room for the triple's own keys); "
                  "e.g. 0,50,100 (default 0)")
    p.add_argument("--runs", type=positive_int,
                   help="repeated runs (default 3; with --peer 5, both tools' runs "
                        "alternating)")
    p.add_argument("--seconds", type=positive_float, default=0.3,
                   help="measuring window per run, CPU count and program (default 0.3)")
    p.add_argument("--warmup", type=non_negative_float, default=0.1,
                   help="syscall mode: discarded warm-up window after attach (default 0.1)")
    p.add_argument("--triples", type=positive_int,
                   help="triples per program run (default: 100 in the kernel, so that "
                        "test_run's 1 ns resolution is below 1%% of the figure; 1 per "
                        "syscall event as in the seed, or with --peer as many as the peer's "
                        "event does: 10 since v6.1)")
    p.add_argument("--key", choices=KEYS,
                   help="the triple's key: random (a random key in the CPU's own slice, "
                        "the default) or tid (the thread id, as map_perf_test; the default "
                        "with --peer)")
    p.add_argument("--trigger", choices=("auto", *TRIGGERS), default="auto",
                   help="syscall mode: what the program hangs on (default: kprobe where "
                        "the kernel has kprobes, else the syscall tracepoint)")
    p.add_argument("--peer", choices=PEERS,
                   help="also run a kernel tool on the same maps and CPU counts, and show "
                        "both figures: samples/bpf/map_perf_test (built into the test-VM "
                        "images; needs kprobes: use --kernel), or the selftests' bench "
                        "htab-mem (built on this machine from a linux-source >= 6.6, fetched "
                        "from Debian's mirror if none is here; its map is a hash map of "
                        "max(8192, 64 x CPUs) entries, and it needs bpf_loop: 5.17+)")
    add_json(p)
    host_only(p.add_argument("--plot", metavar="FILE", action=OutputFile,
                             help="write PNG plots (made on this machine)"))
    add_kernel(p, "run the bench")
    p.set_defaults(func=run)


def options(args: argparse.Namespace) -> Options:
    """The bench options from the command line; usage errors name their option."""
    runs = args.runs if args.runs is not None else PEER_RUNS if args.peer else 3
    if runs < 1:
        raise UsageError("--runs", f"{runs}: at least 1")
    if not 0.01 <= args.seconds <= 60:
        raise UsageError("--seconds", f"{args.seconds}: between 0.01 and 60")
    if not 0 <= args.warmup <= 60:
        raise UsageError("--warmup", f"{args.warmup}: between 0 and 60")
    if args.triples is not None and not 1 <= args.triples <= 1000:
        raise UsageError("--triples", f"{args.triples}: between 1 and 1000")
    modes = MODES[args.mode or (Mode.SYSCALL.value if args.peer else "both")]
    if args.peer and Mode.SYSCALL not in modes:
        raise UsageError("--peer", f"{args.peer} is syscall-triggered: use --mode syscall "
                         "or both")
    cpus = tuple(args.cpus or range(1, len(os.sched_getaffinity(0)) + 1))
    types, sizes = tuple(args.types or TYPES), tuple(args.max_entries or DEFAULT_SIZES)
    if args.peer == "htab-mem":  # its map's size (64 x CPUs, 8192 at least) is read where it runs
        from pybpfmap.bench.compare_htab_mem import check_types

        types, sizes = tuple(args.types or ("hash",)), tuple(args.max_entries or (8192,))
        check_types(types)  # before anything is built
    elif args.peer:  # the peer's own workload unless told otherwise
        from pybpfmap.bench.compare import PEER_TYPES

        types, sizes = tuple(args.types or PEER_TYPES), tuple(args.max_entries or PEER_SIZES)
    return Options(
        modes=modes, types=types, prealloc=args.alloc or (True, False), cpus=cpus,
        max_entries=sizes, fills=tuple(args.fills or (0,)),
        runs=runs, seconds=args.seconds, warmup=args.warmup,
        inkernel_triples=args.triples or 100, syscall_triples=args.triples or 1,
        key=args.key or "random", trigger=TRIGGERS.get(args.trigger))  # auto: None


def local(args: argparse.Namespace) -> list[BenchRecord]:
    from pybpfmap.bench.run import run as bench_run

    opts = options(args)
    if args.peer == "htab-mem":
        from pybpfmap.bench import compare_htab_mem

        return compare_htab_mem.run(opts, explicit_sizes=args.max_entries is not None,
                                    explicit_triples=args.triples is not None,
                                    explicit_trigger=args.trigger != "auto",
                                    build=_host_htab_mem() if not in_test_vm() else None)
    if args.peer:
        from pybpfmap.bench import compare

        return compare.run(opts, args.peer, explicit_key=args.key is not None,
                           explicit_triples=args.triples is not None)
    progress = Progress(opts.steps(), enabled=False if in_test_vm() else None)
    try:
        return bench_run(opts, progress.step)
    finally:
        progress.done()


def _host_htab_mem():
    """The htab-mem build for this machine's kernel (built first if need be)."""
    from pybpfmap.vm import peers

    return peers.ensure_htab_mem(os.uname().release, peers.HOST_BTF)


def _vm_htab_mem(kernels: list) -> None:
    """The htab-mem build for each test-VM kernel, made on the host before it boots."""
    from pybpfmap.vm import peers
    from pybpfmap.vm.build import ensure_image

    for kernel in kernels:
        image = ensure_image(kernel)
        peers.ensure_htab_mem(image.release, image.kernel)


def vm_timeout(args: argparse.Namespace) -> float:
    """Generous: boot, a BCC compile per map under TCG, and every window
    (htab-mem: three use cases of 6 s and their setup per record)."""
    opts = options(args)
    maps = len(opts.types) * len(opts.prealloc) * len(opts.max_entries) * len(opts.fills)
    window = 2 * (opts.seconds + opts.warmup) + 4
    peer = (3 * 40 * opts.steps() // max(1, opts.runs) if args.peer == "htab-mem" else 0)
    return 600 + maps * 90 + peer + opts.steps() * window * (
        3 if args.peer == "map_perf_test" else 1)


def run(args: argparse.Namespace) -> int:
    if args.kernels:
        from pybpfmap.commands import invm
        from pybpfmap.vm.relay import no_splats
        from pybpfmap.vm.run import no_prealloc_tracing_splats

        if args.peer == "htab-mem":
            _vm_htab_mem(args.kernels)
        # the syscall mode's kprobe programs on NO_PREALLOC maps: 5.7-6.0 WARN once
        tracing = options(args).tracing_no_prealloc
        records = invm.records(args, load, timeout=vm_timeout(args), expected_splats=(
            no_prealloc_tracing_splats if tracing else no_splats))
    else:
        records = local(args)
    if args.plot:
        from pybpfmap.bench.plot import plot

        plot(records, args.plot)
    emit(args, records, render_text)
    for r in records if not in_test_vm() else ():  # in the VM: the host warns
        where = f"{r.label} {r.mode} {r.cpus} CPU max_entries={r.max_entries}"
        if r.flagged and r.refused is None:
            print(f"pybpfmap bench: warning: {where}: not verified: "
                  f"{'; '.join(r.verification.problems)}", file=sys.stderr)
        elif r.noisy:
            print(f"pybpfmap bench: warning: {where}: runs disagree (cv above 5%)",
                  file=sys.stderr)
    measured = [r for r in records if r.refused is None]
    if not measured:
        first = records[0].refused
        raise KernelError(first.param, first.errno,
                          f"nothing could be measured: {first.reason}")
    return 0
