"""``pybpfmap bench --peer htab-mem``: the selftests' ``bench htab-mem`` beside pybpfmap.

In the same boot: pybpfmap's syscall mode on the peer's map (a hash map of
its max_entries, ``max(8192, 64 * CPUs)``, 4-byte keys, 8-byte values,
preallocated and BPF_F_NO_PREALLOC), from a tracepoint as the peer's program
is, on CPUs 0..k-1 (``bench -a`` pins its producers there), with as many
triples per event as make about one peer op (``OP_BATCH`` = 64 map calls:
21 triples, 63 calls); then, for each record, the peer with ``k`` producers
and the same allocation mode, one run per use case
(:mod:`pybpfmap.bench.peer_htab_mem`).  Each record gets an
:class:`~pybpfmap.bench.record.HtabMemPeer`: the peer's k ops/s per producer,
memory and peak memory (its memory cgroup's ``memory.current`` and
``memory.peak``), pybpfmap's own in the same units, and what still differs.
"""

from __future__ import annotations

import os
from dataclasses import replace

from pybpfmap.bench import peer_htab_mem, triggers
from pybpfmap.bench import run as bench_run
from pybpfmap.bench.options import Options
from pybpfmap.bench.record import BenchRecord, HtabMemPeer, Mode
from pybpfmap.errors import UsageError
from pybpfmap.guest import in_test_vm
from pybpfmap.output import Progress
from pybpfmap.vm.peers import HTAB_MEM, HtabMemBuild, locate

PAIRED = "add_del_on_diff_cpu"   # an adding and a deleting producer per pair
MIB = 1 << 20
CALLS_PER_TRIPLE = 3             # update, lookup, delete


def check_types(types: tuple[str, ...]) -> None:
    """UsageError unless ``types`` is the peer's one map type."""
    if tuple(types) != ("hash",):
        raise UsageError("--types", f"{HTAB_MEM}'s map is a hash map: use --types hash")


def differences(r: BenchRecord, build: HtabMemBuild) -> list[str]:
    """What pybpfmap's event does differently from the peer's op, for the record."""
    calls = CALLS_PER_TRIPLE * r.triples_per_event
    out = [f"pybpfmap's event is {r.triples_per_event} update -> lookup -> delete triples "
           f"({calls} map calls, each key added and removed at once); htab-mem's op is "
           f"{build.op_batch} map calls through bpf_loop: overwrite updates {build.op_batch} "
           "keys that stay in the map, batch_add_batch_del adds them all then deletes them "
           "all (and counts 2 ops), add_del_on_diff_cpu adds on one CPU and deletes on another",
           f"pybpfmap's program runs on {r.trigger} {triggers.SYSCALL}() and also counts its "
           "runs and failed calls; htab-mem's on the getpgid() (and getppid()) tracepoint",
           (f"pybpfmap's map holds max_entries {r.max_entries} plus room for its own keys "
            f"({r.map_max_entries} created); htab-mem's exactly {r.max_entries}"
            if r.map_max_entries != r.max_entries else
            f"both maps have max_entries {r.max_entries}; pybpfmap's keys are drawn from "
            "each CPU's own slice of it, htab-mem's are the CPU number plus multiples of "
            "the producer count"),
           "pybpfmap's memory is the map's alone (a memory cgroup of its own, from creation); "
           "htab-mem's is its whole cgroup's memory.current (the map, its program, the "
           "process's own kernel memory), the mean after its warm-up, and memory.peak",
           "pybpfmap's figure is the median of its runs' whole-window means; htab-mem's the "
           "mean of its one-second samples after one second of warm-up"]
    if r.key != "random":
        out.append(f"pybpfmap's key is {r.key}; htab-mem's the CPU number plus multiples of "
                   "the producer count")
    out.append("a NO_PREALLOC map's memory follows how many elements are freed and not yet "
               "reused: pybpfmap's triple frees each element before the next update takes "
               "one, htab-mem's batch_add_batch_del frees 64 at a time")
    return out


def _kops(r: BenchRecord, op_batch: int | None) -> float | None:
    """pybpfmap's events/s per CPU in htab-mem's unit: k ops of ``op_batch`` map calls."""
    rate = r.events_per_sec.median if r.events_per_sec else None
    if rate is None or not op_batch:
        return None
    return round(rate * CALLS_PER_TRIPLE * r.triples_per_event / op_batch / 1000, 2)


def _mib(n: int | None) -> float | None:
    return None if n is None else round(n / MIB, 3)


def run(opts: Options, *, explicit_sizes: bool = False, explicit_triples: bool = False,
        explicit_trigger: bool = False, use_cases: tuple[str, ...] | None = None,
        build: HtabMemBuild | None = None) -> list[BenchRecord]:
    """pybpfmap's bench on the peer's map as ``opts`` says, then the peer per record."""
    check_types(opts.types)
    build = build or locate()
    cases = use_cases or build.use_cases
    unknown = [u for u in cases if u not in build.use_cases]
    if unknown:
        raise UsageError("--peer", f"{HTAB_MEM} has no use case {unknown[0]!r} (it has "
                         f"{', '.join(build.use_cases)})")
    online = os.sysconf("SC_NPROCESSORS_ONLN")
    size = build.max_entries(online)
    if not explicit_sizes and size is None:
        raise UsageError("--max-entries", f"cannot read how {HTAB_MEM} sizes its map "
                         f"({build.max_entries_expr!r}): pass --max-entries")
    op_batch = build.op_batch or 64
    opts = replace(opts, types=("hash",), max_entries=opts.max_entries if explicit_sizes
                   else (size,),
                   syscall_triples=(opts.syscall_triples if explicit_triples
                                    else max(1, round(op_batch / 3))),
                   trigger=opts.trigger if explicit_trigger else triggers.TRACEPOINT,
                   cpus_from_zero=True)
    peer_runs = sum(len([u for u in cases if u != PAIRED or k % 2 == 0])
                    for k in opts.cpus) * len(opts.prealloc) * len(opts.max_entries)
    progress = Progress(opts.steps() + peer_runs, enabled=False if in_test_vm() else None)
    try:
        records = bench_run.run(opts, progress.step)
        for r in records:
            if r.mode is not Mode.SYSCALL or r.refused is not None or r.fill_percent:
                continue
            done, skipped = [], []
            for u in cases:
                if u == PAIRED and r.cpus % 2:
                    skipped.append(f"{u}: needs an even number of producers, not {r.cpus}")
                    continue
                progress.step(f"{HTAB_MEM} {u} {r.label} {r.cpus} CPU")
                done.append(peer_htab_mem.run(build, peer_htab_mem.HtabMemOptions(
                    use_case=u, producers=r.cpus, value_size=r.value_size,
                    preallocated=r.prealloc, affinity=True)))
            mem = r.memory
            r.htab_mem = HtabMemPeer(
                build=build.describe(), op_batch=build.op_batch,
                map_calls_per_event=CALLS_PER_TRIPLE * r.triples_per_event,
                pybpfmap_kops_per_producer=_kops(r, build.op_batch),
                pybpfmap_memory_mib=_mib(mem.kernel_after if mem else None),
                pybpfmap_peak_mib=_mib(mem.peak if mem else None),
                runs=done, skipped=skipped, differences=differences(r, build))
            if build.release != r.machine.kernel_release:
                r.notes.append(f"{HTAB_MEM} was built for {build.release}, this is "
                               f"{r.machine.kernel_release}")
    finally:
        progress.done()
    return records
