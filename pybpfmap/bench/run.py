"""From options to records: which maps, which modes, how many CPUs and runs.

Every figure becomes one JSON-ready record (a dict) that says what was
measured (``type``, ``prealloc``, ``mode``, ``cpus``, ``max_entries``), the
result (``ns_per_op``; ``events_per_sec`` in syscall mode), how repeatable it
was (``runs``, ``cv``, ``samples``) and where it came from (``kernel``,
``where``, ``virt``, ``accel``, ``trigger``).  A map the kernel refuses (LRU
with BPF_F_NO_PREALLOC) becomes a record with ``refused`` and the errno.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

from pybpfmap import bpfsys
from pybpfmap.bench import inkernel, syscall
from pybpfmap.errors import KernelError, UsageError
from pybpfmap.maps import MapSpec, old_memlock_estimate
from pybpfmap.stats import summarise

MODES = ("inkernel", "syscall")
CALL_SECONDS = 0.01  # one BPF_PROG_TEST_RUN call lasts about this long


@dataclass
class Options:
    modes: tuple[str, ...] = MODES
    types: tuple[str, ...] = ("hash",)
    prealloc: tuple[bool, ...] = (True, False)
    cpus: tuple[int, ...] = (1,)
    max_entries: tuple[int, ...] = (1000,)
    runs: int = 5
    seconds: float = 0.3  # measuring window per run and CPU count
    triples: int = 1  # triples per program run (map_perf_test since 2022: 10)
    trigger: str = "auto"
    key_size: int = 4
    value_size: int = 8
    warnings: list[str] = field(default_factory=list)

    def steps(self) -> int:
        """Measurements to make, for the progress bar."""
        return (len(self.types) * len(self.prealloc) * len(self.max_entries) * self.runs
                * len(self.cpus) * len(self.modes))


def cpu_sets(counts: tuple[int, ...]) -> dict[int, list[int]]:
    """k -> the first k CPUs this process may run on."""
    allowed = sorted(os.sched_getaffinity(0))
    for k in counts:
        if not 1 <= k <= len(allowed):
            raise UsageError("--cpus", f"{k} CPUs asked; this process may use "
                             f"{len(allowed)} ({','.join(map(str, allowed))})")
    return {k: allowed[:k] for k in counts}


def environment() -> dict:
    """Where the figures come from.  ``where`` is "vm" inside pybpfmap's test VM
    (:func:`pybpfmap.vm.guest.in_test_vm`), else "host" — which may itself be a
    virtual machine: ``virt`` says so.  ``accel`` (kvm or tcg) only in the test
    VM, from PYBPFMAP_ACCEL when the runner exports it: TCG figures are
    emulation figures, not hardware ones."""
    from pybpfmap.kernel import detect_vm
    from pybpfmap.vm.guest import in_test_vm

    in_vm, virt = detect_vm()
    env = {"kernel": os.uname().release, "where": "vm" if in_test_vm() else "host",
           "virt": virt if in_vm else "none", "nproc": len(os.sched_getaffinity(0))}
    if in_test_vm():
        accel = os.environ.get("PYBPFMAP_ACCEL")
        if not accel:  # systemd-detect-virt says "qemu" under TCG, "kvm" under KVM
            accel = {"qemu": "tcg", "kvm": "kvm"}.get(virt, f"unknown ({virt})")
        env["accel"] = accel
    return env


def memlock_fields(spec: MapSpec, memlock: int) -> dict:
    """fdinfo memlock, and whether it is the kernel's pre-v6.4 estimate
    (:func:`pybpfmap.maps.old_memlock_estimate`) rather than real usage."""
    return {"memlock": memlock, "memlock_is_estimate": memlock == old_memlock_estimate(spec)}


def _base(spec: MapSpec, mode: str, env: dict, opts: Options) -> dict:
    return {"type": spec.type, "prealloc": spec.prealloc, "mode": mode,
            "max_entries": spec.max_entries, "key_size": spec.key_size,
            "value_size": spec.value_size, "triples_per_run": opts.triples, **env}


def run(opts: Options, step: Callable[[str], None] = lambda label: None) -> list[dict]:
    """Measure everything ``opts`` asks for; one record per (map, mode, CPU count).

    For each max_entries, every map is loaded at once and the runs are
    interleaved (run 1 of every map, then run 2, ...), so that a disturbance
    of the machine spreads over maps instead of biasing one of them."""
    env = environment()
    sets = cpu_sets(opts.cpus)
    envs = {"inkernel": {**env, "trigger": "test_run"}}
    if "syscall" in opts.modes:
        trigger, why = syscall.choose_trigger(opts.trigger)
        envs["syscall"] = {**env, "trigger": trigger, "trigger_why": why}
    records: list[dict] = []
    for n in opts.max_entries:
        specs = []
        for type_ in opts.types:
            for prealloc in opts.prealloc:
                spec = MapSpec(type_, prealloc, opts.key_size, opts.value_size, n)
                try:
                    spec.preflight()
                except KernelError as e:
                    for mode in opts.modes:
                        records.append({**_base(spec, mode, envs[mode], opts), "cpus": None,
                                        "refused": {"errno": e.err, "param": e.param,
                                                    "meaning": e.meaning,
                                                    "reason": e.message()}})
                        for _ in range(opts.runs * len(sets)):
                            step(f"{spec.label} refused")
                    continue
                specs.append(spec)
        if "inkernel" in opts.modes:
            records += _inkernel(specs, sets, opts, envs["inkernel"], step)
        if "syscall" in opts.modes:
            records += _syscall(specs, sets, opts, envs["syscall"], step)
    return records


def _inkernel(specs: list[MapSpec], sets: dict[int, list[int]], opts: Options, env: dict,
              step: Callable[[str], None]) -> list[dict]:
    samples = {(spec, k): [] for spec in specs for k in sets}
    with ExitStack() as stack:
        loaded = []
        for spec in specs:
            progs = stack.enter_context(inkernel.load(spec, opts.triples))
            repeat = inkernel.calibrate(progs.triple_fd, CALL_SECONDS)
            empty_repeat = inkernel.calibrate(progs.empty_fd, CALL_SECONDS)
            loaded.append((spec, progs, repeat, empty_repeat))
        for r in range(opts.runs):
            for spec, progs, repeat, empty_repeat in loaded:
                for k, cpus in sets.items():
                    step(f"{spec.label} {spec.max_entries} inkernel {k} CPU run {r + 1}")
                    samples[spec, k].append(inkernel.measure(progs, cpus, opts.seconds,
                                                             repeat, empty_repeat))
        memlock = {spec: int(bpfsys.fdinfo(progs.map_fd).get("memlock", "0"))
                   for spec, progs, _, _ in loaded}
        repeats = {spec: repeat for spec, _, repeat, _ in loaded}
    out = []
    for (spec, k), got in samples.items():
        empty = inkernel.baseline(got)
        ns = summarise([s.ns_per_op(empty) for s in got])
        total = statistics.median(s.ops_per_sec_total(empty) for s in got)
        out.append({**_base(spec, "inkernel", env, opts), "cpus": k,
                    "ns_per_op": round(ns.median, 2), "ns_per_op_min": round(ns.low, 2),
                    "ns_per_op_max": round(ns.high, 2),
                    "ops_per_sec_per_cpu": round(1e9 / ns.median) if ns.median > 0 else None,
                    "ops_per_sec_total": round(total),
                    "triple_run_ns": round(statistics.median(
                        statistics.fmean(s.triple_ns) for s in got), 2),
                    "empty_run_ns": round(empty, 2),
                    "repeat": repeats[spec], "runs": ns.runs, "cv": round(ns.cv, 4),
                    "cv_warning": ns.noisy, "samples": [round(v, 2) for v in ns.values],
                    **memlock_fields(spec, memlock[spec])})
    return out


def _syscall(specs: list[MapSpec], sets: dict[int, list[int]], opts: Options, env: dict,
             step: Callable[[str], None]) -> list[dict]:
    exe, no_exe = syscall.compiled_loop()
    per: dict[tuple[MapSpec, int], list[dict]] = {(spec, k): [] for spec in specs
                                                  for k in sets}
    with ExitStack() as stack:
        loaded = [(spec, stack.enter_context(syscall.load(spec, env["trigger"], opts.triples)))
                  for spec in specs]
        for r in range(opts.runs):
            for spec, att in loaded:
                for k, cpus in sets.items():
                    step(f"{spec.label} {spec.max_entries} syscall {k} CPU run {r + 1}")
                    got = {}
                    for prog in ("empty", "triple"):
                        att.attach(prog)
                        got[prog] = syscall.python_rates(cpus, opts.seconds)
                        if k == 1 and exe is not None:
                            got[f"c_{prog}"] = syscall.compiled_rate(exe, cpus[0],
                                                                     opts.seconds)
                        att.detach()
                    per[spec, k].append(got)
        memlock = {spec: int(bpfsys.fdinfo(att.map_fd).get("memlock", "0"))
                   for spec, att in loaded}
    out = []
    for (spec, k), runs in per.items():
        per_worker = summarise([statistics.fmean(x.burst for x in g["triple"]) for g in runs])
        empty = statistics.median(statistics.fmean(x.burst for x in g["empty"]) for g in runs)
        map_ns = summarise([statistics.fmean(1e9 / t.burst - 1e9 / e.burst
                                             for t, e in zip(g["triple"], g["empty"],
                                                             strict=True)) / opts.triples
                            for g in runs])
        rec = {**_base(spec, "syscall", env, opts), "cpus": k,
               "events_per_sec": round(per_worker.median),
               "events_per_sec_min": round(per_worker.low),
               "events_per_sec_max": round(per_worker.high),
               "events_per_sec_total": round(statistics.median(
                   sum(x.burst for x in g["triple"]) for g in runs)),
               "events_per_sec_wall": round(statistics.median(
                   statistics.fmean(x.mean for x in g["triple"]) for g in runs)),
               "empty_events_per_sec": round(empty),
               "ns_per_op": round(map_ns.median, 2),
               "runs": per_worker.runs, "cv": round(per_worker.cv, 4),
               "cv_warning": per_worker.noisy,
               "samples": [round(v) for v in per_worker.values],
               **memlock_fields(spec, memlock[spec])}
        if k == 1:
            if exe is None:
                rec["trigger_ratio"] = None
                rec["trigger_ratio_unavailable"] = no_exe
            else:
                rec["trigger_ratio"] = round(statistics.median(
                    g["triple"][0].burst / g["c_triple"].burst for g in runs), 3)
                rec["trigger_ratio_empty"] = round(statistics.median(
                    g["empty"][0].burst / g["c_empty"].burst for g in runs), 3)
        out.append(rec)
    return out
