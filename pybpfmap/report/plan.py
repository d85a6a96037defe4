"""What a report runs: one :class:`Section` per command and place, with its budget.

The default report answers the seed's question across eras within about 15
minutes on a 2-core machine (:func:`plan`, ``full=False``): this machine, and
by default 5.10 (bullseye) and 6.1 (bookworm) in the test VM.  Per test-VM
kernel: info, maps (the upfront charge), maps --from-bpf on per-CPU maps
(the seed's alloc_percpu(GFP_ATOMIC) claim), the in-kernel bench of the
triple, the allocator scenario on the kinds that tell the eras apart
(preallocated hash and percpu_hash, and the NO_PREALLOC percpu_hash whose
alloc_percpu takes pcpu_lock: the seed's deadlock on 5.10), and re-entry on
the preallocated hash (a deadlock on 5.10, EBUSY on 6.1).  ``full`` runs
what follows.

The full report, on the host: info, maps, the in-kernel and tracepoint-triggered benchmark, the
stress check (the tracepoint variant when the host has no kprobes; the kprobe
scenarios only when it has them *and* is a VM: the report never passes
``--force``) and the bcc tools that can attach.  In the test VM, for each
kernel: info, maps, both stress scenarios, the kprobe-triggered benchmark and
the kprobe-based bcc tools.  Every VM section goes through ``--kernel`` (the
relay); every section is its own ``python3 -m pybpfmap ... --json`` process
with a time limit.

Stress rows run in their own boots only where the era predicts that a
scenario may deadlock the kernel (a lockup then voids only its own row);
elsewhere one boot per scenario keeps the report within its budget — an
unexpected hang there still voids only that boot's rows, and says so.
Maps are measured at the same max_entries everywhere, so that the
across-kernels table compares like with like.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pybpfmap.bcc_compare.tools import TOOLS
from pybpfmap.stress import scenarios
from pybpfmap.stress.kinds import BY_NAME as KIND_BY_NAME
from pybpfmap.stress.kinds import KINDS
from pybpfmap.vm.catalog import CatalogKernel
from pybpfmap.vm.image import release_of

MAPS_ENTRIES = 10000      # everywhere: filling maps from Python under TCG costs ~40x
BENCH_ENTRIES = 1000      # the across-kernels bench figure: inkernel, hash, 1 CPU
SECTION_NAMES = ("info", "maps", "bench", "stress", "bcc-compare")


@dataclass(frozen=True)
class Section:
    """One command of the report at one place.

    ``argv`` is given to ``python3 -m pybpfmap``; ``{out}`` in it is replaced
    by the section's own folder.  ``budget`` is the time it should take (s);
    ``limit`` the time after which it is stopped (SIGINT, then SIGKILL)."""

    name: str       # info, maps, maps-from-bpf, bench, stress, bcc-compare
    where: str      # "host", a catalog kernel, or the release of a kernel you bring
    argv: tuple[str, ...]
    budget: float
    scenario: str = ""   # stress sections: which scenario

    @property
    def key(self) -> str:
        return f"{self.name}{'-' + self.scenario if self.scenario else ''}@{self.where}"

    @property
    def folder(self) -> str:
        return self.key.replace("@", "-")

    @property
    def limit(self) -> float:
        return self.budget * 3 + 120


def _tools(kprobes: bool) -> list[str]:
    """The bcc tools that need kprobes (for the VM), or those that do not (the host)."""
    return [name for name, tool in TOOLS.items() if tool.needs_kprobes is kprobes]


def stress_durations(release: str, scenario: str, quick: bool) -> tuple[float, bool]:
    """(seconds per row, isolate) for one scenario on one kernel.

    60 s per row where the era predicts the allocator scenario may deadlock:
    a preallocated row that stays clean for a minute means something there."""
    s = scenarios.SCENARIOS.named(scenario)
    risky = s.may_deadlock(release, [k.spec for k in KINDS])
    if s.sufficient_seconds is not None:  # re-entry: the answer is the first nested update
        return s.sufficient_seconds, risky
    if quick:
        return 5.0, risky
    return (60.0 if risky else 10.0), risky


BOOT_S = 45.0        # a TCG boot to the command, and the time the runner needs after it
ROW_OVERHEAD_S = 15.0  # per stress row: BCC's compile under TCG, attach, detach, counters


def row_budget(secs: float, scenario: str, boot: bool, boot_s: float = BOOT_S) -> float:
    """What one stress row should take: its duration, the allocator scenario's
    baseline workload window (duration/4, 1 to 3 s), BCC and, in its own
    boot, the boot."""
    baseline = scenarios.SCENARIOS.named(scenario).baseline_seconds(secs)
    return secs + baseline + ROW_OVERHEAD_S + (boot_s if boot else 0.0)


LEAN_STRESS = {"allocator": ("hash/prealloc", "percpu_hash/prealloc", "percpu_hash/no_prealloc"),
               "reentry": ("hash/prealloc",)}
LEAN_SECONDS = 10.0
FROM_BPF = "maps-from-bpf"   # a section of maps --from-bpf (its records are enomem's)
FROM_BPF_UPDATES = 100000   # the seed's claim: failures per 100,000 atomic updates
# 512-byte per-CPU values: the atomic per-CPU pool runs dry within a burst (8-byte ones
# never did here, on 5.10, 6.1 or 6.18: docs/measurements.md)
FROM_BPF_VALUE = 512
# A TCG boot to the command and back, as the default report measured it (5.10: ~35 s
# of the info section's 22 s on bookworm): the lean budgets are tight on purpose.
LEAN_BOOT_S = 30.0


def lean(kernels: list[CatalogKernel], host_kprobes: bool, host_in_vm: bool
         ) -> list[Section]:
    """The default report: the era contrast and the seed's claims, ~15 min."""
    maps = ("maps", "--types", "hash,percpu_hash", "--max-entries", str(MAPS_ENTRIES),
            "--json")
    from_bpf = ("maps", "--from-bpf", "--types", "percpu_hash", "--value-size",
                str(FROM_BPF_VALUE), "--max-entries", str(FROM_BPF_UPDATES), "--updates",
                str(FROM_BPF_UPDATES), "--json")
    bench = ("bench", "--mode", "inkernel", "--types", "hash,percpu_hash", "--cpus", "1,2",
             "--max-entries", str(BENCH_ENTRIES), "--runs", "3")
    sections = [
        Section("info", "host", ("info", "--json"), 10),
        Section("maps", "host", maps, 20),
        Section(FROM_BPF, "host", from_bpf, 20),
        Section("bench", "host", (*bench, "--plot", "{out}/bench.png", "--json"), 60),
    ]
    if host_kprobes and host_in_vm:
        sections += _lean_stress("host", (), _host_release(), boot=False)
    else:  # the weaker variant: lock and kmem tracepoints, never --force
        sections.append(Section("stress", "host", (
            "stress", "--tracepoints", "--types", ",".join(LEAN_STRESS["allocator"]),
            "--duration", "5", "--json"), 3 * 9 + 30, "allocator"))
    for kernel in kernels:
        k = ("--kernel", kernel.origin or kernel.name, "--results", "{out}/vm")
        where = kernel.name
        boot = LEAN_BOOT_S
        sections += [Section("info", where, ("info", *k, "--json"), 5 + boot),
                     Section("maps", where, (*maps, *k), 30 + boot),
                     Section(FROM_BPF, where, (*from_bpf, *k), 25 + boot),
                     Section("bench", where, (*bench, "--plot", "{out}/bench.png", *k,
                                              "--json"), 50 + boot)]
        sections += _lean_stress(where, k, release_of(kernel), boot=True)
    return sections


def _lean_stress(where: str, k: tuple[str, ...], release: str, boot: bool) -> list[Section]:
    out = []
    for name, kinds in LEAN_STRESS.items():
        s = scenarios.SCENARIOS.named(name)
        secs = s.sufficient_seconds or LEAN_SECONDS
        risky = sum(s.may_deadlock(release, [KIND_BY_NAME[kd].spec]) for kd in kinds)
        argv = ("stress", "--scenario", name, "--types", ",".join(kinds),
                "--duration", f"{secs:g}", *(("--isolate-risky",) if k else ()), *k, "--json")
        budget = (row_budget(secs, name, boot, LEAN_BOOT_S) * risky
                  + row_budget(secs, name, False) * (len(kinds) - risky)
                  + (LEAN_BOOT_S if boot and risky < len(kinds) else 0))
        out.append(Section("stress", where, argv, budget, name))
    return out


def plan(kernels: list[CatalogKernel], quick: bool, host_kprobes: bool, host_in_vm: bool,
         full: bool = True) -> list[Section]:
    """The sections of a report: the lean default (``full=False``), or every
    command; ``quick`` keeps the full one to a few minutes."""
    if not full:
        return lean(kernels, host_kprobes, host_in_vm)
    maps = ("maps", "--max-entries", str(MAPS_ENTRIES), "--json")
    bench_host = (("bench", "--types", "hash", "--cpus", "1", "--max-entries",
                   str(BENCH_ENTRIES), "--runs", "3") if quick else
                  ("bench", "--cpus", "1,2", "--max-entries", f"{BENCH_ENTRIES},100000",
                   "--runs", "3"))
    # the host runs the tools it can attach; the VM sections the kprobe ones
    host_tools = [*_tools(False), *(_tools(True) if host_kprobes else [])]
    tools_host = ("--tools", "runqlat" if quick else ",".join(host_tools))
    sections = [
        Section("info", "host", ("info", "--json"), 10),
        Section("maps", "host", maps, 30),
        Section("bench", "host", (*bench_host, "--plot", "{out}/bench.png", "--json"),
                60 if quick else 180),
    ]
    if host_kprobes and host_in_vm:
        for scenario in (s.name for s in scenarios.SCENARIOS.values() if not s.needs_test_vm):
            secs, _ = stress_durations(_host_release(), scenario, quick)
            sections.append(Section("stress", "host", (
                "stress", "--scenario", scenario, "--duration", f"{secs:g}", "--json"),
                row_budget(secs, scenario, boot=False) * len(KINDS), scenario))
    else:  # the weaker variant: lock and kmem tracepoints, never --force
        secs = 3.0 if quick else 8.0
        sections.append(Section("stress", "host", (
            "stress", "--tracepoints", "--duration", f"{secs:g}", "--json"),
            (secs + 4) * len(KINDS) + 30, "allocator"))
    sections.append(Section("bcc-compare", "host", ("bcc-compare", *tools_host, "--json"),
                            60 if quick else 240))
    for kernel in kernels:
        # a kernel you bring is given to each command by its path, named by its release
        k = ("--kernel", kernel.origin or kernel.name, "--results", "{out}/vm")
        where = kernel.name
        sections += [Section("info", where, ("info", *k, "--json"), 60),
                     Section("maps", where, (*maps, *k), 120)]
        release = release_of(kernel)
        for s in scenarios.SCENARIOS.values():
            # one boot for the rows the era predicts are safe, one for each of the others
            secs, _ = stress_durations(release, s.name, quick)
            kinds = [kd for kd in KINDS if s.report_kinds is None or kd.name in s.report_kinds]
            types = () if s.report_kinds is None else ("--types", ",".join(s.report_kinds))
            risky = sum(s.may_deadlock(release, [kd.spec]) for kd in kinds)
            sections.append(Section("stress", where, (
                "stress", "--scenario", s.name, *types, "--duration", f"{secs:g}",
                "--isolate-risky", *k, "--json"),
                row_budget(secs, s.name, boot=True) * risky
                + row_budget(secs, s.name, boot=False) * (len(kinds) - risky)
                + (BOOT_S if risky < len(kinds) else 0), s.name))
        if not quick:
            sections += [
                Section("bench", where, (
                    "bench", "--mode", "both", "--types", "hash", "--cpus", "1,2",
                    "--max-entries", str(BENCH_ENTRIES), "--runs", "3",
                    "--plot", "{out}/bench.png", *k, "--json"), 180),
                Section("bcc-compare", where, (
                    "bcc-compare", "--tools", ",".join(_tools(True)), *k, "--json"), 240),
            ]
    return sections


def _host_release() -> str:
    return os.uname().release
