"""One stress run on the machine we are on: attach, drive, watch, detach, count.

Order matters and every step is a context manager, so a failure or Ctrl-C
anywhere undoes what was done (probes first, then programs and maps, then the
network namespaces):

1. make the veth pair; run the workloads once *without* probes (baseline);
2. fork the workloads again (waiting); load bpf/stress.c, enable BPF
   run-time stats, attach every probe;
3. start the heartbeat and the kernel-log watch; let the workloads go;
4. read kprobe_profile and bpf_prog_info, detach, read the counters and the
   new kernel-log lines.

The result is a plain dictionary; :func:`pybpfmap.stress.verdict.judge`
turns it into PASS/FAIL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from pybpfmap.errors import EnvironmentProblem, UsageError
from pybpfmap.kernel import Kernel
from pybpfmap.stress import era, programs, watch, workloads
from pybpfmap.vm.splats import find_splats

INJECTIONS = ("splat", "stall", "panic")
INJECTED_SPLAT = ("WARNING: CPU: 0 PID: {pid} at pybpfmap-negative-control: injected by "
                  "`pybpfmap stress --inject splat`, not a real kernel problem")


@dataclass
class Options:
    """What ``pybpfmap stress`` was asked to do."""

    duration: float = 10.0
    probes: list[str] | None = None
    types: list[str] | None = None
    tracepoints: bool = False
    heartbeat_limit: float = 5.0
    inject: str | None = None
    baseline: float | None = None  # seconds of workload without probes

    def baseline_seconds(self) -> float:
        if self.baseline is not None:
            return self.baseline
        return min(3.0, max(1.0, self.duration / 4))


def choose_probes(opts: Options, k: Kernel) -> tuple[list[programs.Probe], dict[str, str]]:
    """The probes to attach and, for each one asked for (or expected) but not
    attachable here, the reason."""
    if opts.tracepoints:
        ok, why = programs.tracepoints_available(opts.probes or programs.TRACEPOINTS)
        return [programs.Probe("tracepoint", t) for t in ok], why
    if not k.kprobes:
        raise EnvironmentProblem("kprobes", k.kprobes_reason)
    wanted = opts.probes or list(k.unlock_symbols) + list(k.unlock_unavailable)
    ok, why = [], {}
    for sym in wanted:
        if sym in k.unlock_symbols:
            ok.append(programs.Probe("kprobe", sym))
        elif sym in k.unlock_unavailable:
            why[sym] = k.unlock_unavailable[sym]
        else:
            raise UsageError("--probes", f"{sym!r} is not a spin_unlock function pybpfmap "
                             f"knows; choose from {', '.join(k.unlock_symbols)}")
    return ok, why


@contextmanager
def injected(what: str | None, opts: Options) -> Iterator[None]:
    """Negative controls: make the run fail the way a real problem would."""
    if what is None:
        yield
        return
    if what == "splat":
        watch.inject_kmsg(INJECTED_SPLAT.format(pid=os.getpid()))
        yield
    elif what == "stall":
        # Stop this whole process (heartbeat thread included) for longer than
        # the heartbeat limit, from a helper process.
        secs = opts.heartbeat_limit + 1.0
        helper = subprocess.Popen(
            [sys.executable, "-c",
             "import os, signal, sys, time; p = int(sys.argv[1]); "
             "os.kill(p, signal.SIGSTOP); time.sleep(float(sys.argv[2])); "
             "os.kill(p, signal.SIGCONT)", str(os.getpid()), str(secs)])
        try:
            yield
        finally:
            helper.wait()
            os.kill(os.getpid(), signal.SIGCONT)
    elif what == "panic":
        from pybpfmap.vm.guest import in_test_vm

        if not in_test_vm():
            raise UsageError("--inject", "panic only inside the test VM "
                             "(PYBPFMAP_IN_TEST_VM=1)")
        with open("/proc/sys/kernel/sysrq", "w") as f:
            f.write("1")
        with open("/proc/sysrq-trigger", "w") as f:
            f.write("c")
        yield  # not reached: the guest kernel has crashed
    else:
        raise UsageError("--inject", f"one of {', '.join(INJECTIONS)}")


def _rows(ld: programs.Loaded, counts: dict, stats: dict, profile: dict) -> list[dict]:
    rows = []
    for p, probe in enumerate(ld.probes):
        st = stats.get(probe, {})
        prof = profile.get(probe, {})
        for m, _, spec in ld.maps:
            results = counts[(p, m)]
            errors = {op: {e: n for e, n in res.items() if e != "ok"}
                      for op, res in results.items()}
            rows.append({
                "probe": probe.target,
                "kind": probe.kind,
                "type": spec.type,
                "prealloc": spec.prealloc,
                "events": sum(results.get("update", {}).values()),
                "results": results,
                "errors": {op: e for op, e in errors.items() if e},
                "prog_run_cnt": st.get("run_cnt"),
                "prog_run_time_ns": st.get("run_time_ns"),
                "recursion_misses": st.get("recursion_misses"),
                "kprobe_hits": prof.get("hits"),
                "kprobe_nmissed": prof.get("nmissed"),
            })
    return rows


def run_local(opts: Options, k: Kernel) -> dict:
    """Run the stress test here; return the (not yet judged) result."""
    if opts.inject is not None and opts.inject not in INJECTIONS:
        raise UsageError("--inject", f"one of {', '.join(INJECTIONS)}")
    probes, unavailable = choose_probes(opts, k)
    if not probes:
        raise EnvironmentProblem("--probes", "nothing can be attached here: " + "; ".join(
            f"{p}: {why}" for p, why in unavailable.items()))
    maps = programs.select_maps(opts.types)
    result: dict = {
        "variant": "tracepoint" if opts.tracepoints else "kprobe",
        "kernel_release": k.kernel_release,
        "in_vm": k.in_vm,
        "duration_s": opts.duration,
        "expectations": era.expectations(k.kernel_release),
        "unavailable": unavailable,
        "inject": opts.inject,
    }
    if opts.tracepoints:
        result["note"] = ("WEAKER TRACEPOINT VARIANT: the handler runs on lock:contention_*/"
                          "kmem:* tracepoints, not inside spin_unlock, so it never runs with "
                          "a spinlock's release in progress; it checks map ops in lock and "
                          "allocation paths, not the kprobe-on-spin_unlock deadlock itself")
    with ExitStack() as stack:
        pair = stack.enter_context(workloads.veth_pair())
        base = workloads.run(opts.baseline_seconds(), pair=pair)
        # Forked now, before the program is loaded and the heartbeat thread
        # starts: the workload processes hold no BPF or perf fd.
        wl = stack.enter_context(workloads.started(opts.duration, pair=pair))
        result["stats_enabled_by"] = stack.enter_context(programs.bpf_stats())
        ld = stack.enter_context(programs.loaded(probes, maps))
        kmsg = stack.enter_context(watch.kmsg_watch())
        hb = stack.enter_context(watch.heartbeat())
        t0 = time.monotonic()
        with injected(opts.inject, opts):
            wl.go()
            stressed = wl.results()
        ld.detach()
        profile = programs.kprobe_profile(ld.kprobe_events)
        stats = programs.prog_stats(ld)
        result["attached_s"] = round(time.monotonic() - t0, 3)
        counts = programs.read_counts(ld)
        dmesg = kmsg.read_new()
    result["heartbeat"] = hb.as_dict()
    allow = era.allowed_splats(k.kernel_release, [s for _, _, s in maps])
    result["splats"] = [s.to_dict() for s in find_splats(dmesg, allow)]
    result["allowed_splat_patterns"] = allow
    result["workloads"] = {"baseline": base, "stressed": stressed,
                           "ratio": {n: round(stressed[n]["ops_per_s"] / b["ops_per_s"], 3)
                                     if b.get("ops_per_s") else None
                                     for n, b in base.items()}}
    result["probes"] = [{"probe": p.target, "kind": p.kind, **stats.get(p, {}),
                         **{f"kprobe_{k2}": v for k2, v in profile.get(p, {}).items()}}
                        for p in probes]
    result["rows"] = _rows(ld, counts, stats, profile)
    return result
