"""What a report runs: one :class:`Section` per command and place, with its budget.

On the host: info, maps, the in-kernel and tracepoint-triggered benchmark, the
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

    name: str       # info, maps, bench, stress, bcc-compare
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


def row_budget(secs: float, scenario: str, boot: bool) -> float:
    """What one stress row should take: its duration, the allocator scenario's
    baseline workload window (duration/4, 1 to 3 s), BCC and, in its own
    boot, the boot."""
    baseline = scenarios.SCENARIOS.named(scenario).baseline_seconds(secs)
    return secs + baseline + ROW_OVERHEAD_S + (BOOT_S if boot else 0.0)


def plan(kernels: list[CatalogKernel], quick: bool, host_kprobes: bool, host_in_vm: bool
         ) -> list[Section]:
    """The sections of a report; ``quick`` keeps it to a few minutes."""
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
