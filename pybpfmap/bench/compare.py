"""``pybpfmap bench --peer map_perf_test``: the kernel's own tool beside pybpfmap.

In the same boot, on the same map kinds (hash and percpu_hash, preallocated
and BPF_F_NO_PREALLOC), CPU counts (0..k-1, where map_perf_test pins its
children) and max_entries: pybpfmap's syscall mode doing the event the
peer's event does (the triples per event its source does — 10 since Linux
kernel commit 89dc8d0c38e0 ("samples/bpf: Reduce syscall overhead in
map_perf_test.") (in v6.1), 1 before —, the thread id as key, a kprobe on
the syscall), then samples/bpf/map_perf_test (:mod:`pybpfmap.bench.peer`),
run by run.  Each syscall record gets a :class:`PeerFigure`: the peer's
events/s per CPU, pybpfmap's / it, and what still differs between the two
events.  Both tools' "kmalloc" / NO_PREALLOC maps take their elements from
bpf_mem_alloc since Linux kernel commit fba1a1c6c912 ("bpf: Convert hash map
to bpf_mem_alloc.") (in v6.1); the build records which allocator its source has.
"""

from __future__ import annotations

import time
from dataclasses import replace

from pybpfmap.bench import machine, triggers
from pybpfmap.bench import peer as peer_tool
from pybpfmap.bench import run as bench_run
from pybpfmap.bench.options import Options
from pybpfmap.bench.record import BenchRecord, Mode, PeerFigure, Spread, within
from pybpfmap.errors import UsageError
from pybpfmap.guest import in_test_vm
from pybpfmap.kernel import kprobes_available
from pybpfmap.output import Progress

PEER_TYPES = ("hash", "percpu_hash")   # the map kinds of map_perf_test's four hash tests
MIN_CNT = 1000                         # syscalls per CPU and peer run, at least


def differences(test: peer_tool.PeerTest, opts: Options,
                build: peer_tool.PeerBuild) -> list[str]:
    """What pybpfmap's event does differently from the peer's, for the record."""
    out = ["pybpfmap's program also counts its run and xors its keys into a sink (one "
           "per-CPU array lookup per event), checks every map call's result, and deletes "
           "even after a failed lookup (map_perf_test deletes only a key it found)",
           f"pybpfmap attaches one program, on {triggers.SYSCALL}(); map_perf_test "
           f"attaches all eight of its kprobe programs (this test's on {test.syscall}())",
           "pybpfmap's triggers start together after a warm-up and time bursts between "
           "clock reads; map_perf_test's children loop max_cnt times from fork, "
           "unsynchronised, without warm-up"]
    if not test.prealloc and test.map_type == "hash":
        out.append(f"map_perf_test's hash NO_PREALLOC map holds {peer_tool.LPM_FILL_KEYS} "
                   "extra keys (its fill_lpm_trie() writes into it)")
    if opts.key != "tid":
        out.append(f"pybpfmap's key is {opts.key}; map_perf_test's the thread id")
    want = build.triples_per_event[test.bit]
    if opts.syscall_triples != want:
        out.append(f"pybpfmap does {opts.syscall_triples} triples per event, map_perf_test "
                   f"{want}")
    if not test.prealloc:
        out.append(f"NO_PREALLOC elements come from {build.no_prealloc_allocator} "
                   "(map_perf_test still calls the test 'kmalloc')")
    return out


def rate_per_cpu(results: list[peer_tool.PeerResult]) -> float:
    """One peer run's events/s per CPU: the mean of its CPUs' lines, as
    pybpfmap's figure is the mean of its triggers' rates."""
    if not results:
        raise ValueError("no results")
    return sum(r.rate for r in results) / len(results)


def run(opts: Options, tool: str, *, explicit_key: bool = False,
        explicit_triples: bool = False) -> list[BenchRecord]:
    """pybpfmap's bench as ``opts`` says, on the peer's event, then the peer."""
    kprobes, why = kprobes_available()
    if not kprobes:
        raise UsageError("--peer", f"{tool} attaches kprobes and this kernel has none "
                         f"({why}); run it in the test VM with --kernel K")
    build = peer_tool.PeerBuild.load()
    tests = [t for t in peer_tool.PEER_TESTS if t.map_type in opts.types
             and t.prealloc in opts.prealloc]
    triples = {build.triples_per_event[t.bit] for t in tests}
    if len(triples) > 1 and not explicit_triples:
        raise UsageError("--peer", f"{tool}'s tests do different numbers of triples per "
                         f"event ({sorted(triples)}): pass --triples")
    opts = replace(opts, key=opts.key if explicit_key else "tid",
                   syscall_triples=(opts.syscall_triples if explicit_triples
                                    else triples.pop() if triples else opts.syscall_triples),
                   trigger=triggers.KPROBE, cpus_from_zero=True)
    progress = Progress(opts.steps() + opts.runs * len(tests) * len(opts.cpus)
                        * len(opts.max_entries), enabled=False if in_test_vm() else None)
    peer_runs: dict[tuple, tuple[peer_tool.PeerTest, list[float]]] = {}
    warmed: list[bool] = []
    settle = bench_run.settle_time(opts, machine.probe())

    def after_run(run_no: int, n: int, rates: dict[tuple[str, bool, int], float]) -> None:
        """The peer's run ``run_no`` right after pybpfmap's, each call about as
        long as pybpfmap's window (max_cnt = pybpfmap's rate x --seconds).
        One short call first warms the peer's own code paths up (not kept);
        each call comes after the same quiet as pybpfmap's windows."""
        for test in tests:
            for k in opts.cpus:
                progress.step(f"{tool} {test.label} {n} {k} CPU run {run_no + 1}")
                rate = rates.get((test.map_type, test.prealloc, k))
                if not rate:
                    continue
                cnt = max(MIN_CNT, int(rate * opts.seconds))
                timeout = 120 + 20 * cnt / rate
                if not warmed:
                    peer_tool.run(build.path, test.bit, k, n, MIN_CNT, timeout)
                    warmed.append(True)
                time.sleep(settle)
                results = peer_tool.run(build.path, test.bit, k, n, cnt, timeout)
                key = (test.map_type, test.prealloc, k, n)
                peer_runs.setdefault(key, (test, []))[1].append(rate_per_cpu(results))

    try:
        records = bench_run.run(opts, progress.step, after_run)
    finally:
        progress.done()
    for r in records:
        got = peer_runs.get((r.type, r.prealloc, r.cpus, r.max_entries))
        if r.mode is not Mode.SYSCALL or r.fill_percent or got is None:
            continue
        test, rates = got
        peer_rate = Spread.of(rates, 0)
        ratio = (r.events_per_sec.median / peer_rate.median
                 if r.events_per_sec and peer_rate.median else None)
        r.peer = PeerFigure(
            tool=tool, test=f"{test.name} {test.alloc}", events_per_sec=peer_rate,
            triples_per_event=build.triples_per_event[test.bit],
            ratio=None if ratio is None else round(ratio, 3), within=within(ratio),
            build=f"linux-source {build.source_version} for {build.release}, NO_PREALLOC "
                  f"allocator {build.no_prealloc_allocator}",
            differences=differences(test, opts, build))
        if build.release != r.machine.kernel_release:
            r.notes.append(f"{tool} was built for {build.release}, this is "
                           f"{r.machine.kernel_release}")
    return records
