"""What a report runs: one :class:`Section` per command and place."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Section:
    """One command of the report.

    ``argv`` is given to ``python3 -m pybpfmap``; ``{out}`` in it is replaced
    by the section's own output folder.  The command's JSON comes from stdout,
    or from ``json_files`` (relative to that folder) when set: one file gives
    its content, several a dict keyed by file stem.
    """

    name: str           # info, maps, bench, stress, bcc-compare
    where: str          # "host" or a test-VM kernel name
    argv: list[str]
    timeout: float
    json_files: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.where}"


def _kprobe_tools() -> list[str]:
    from pybpfmap.bcc_compare.tools import TOOLS

    return [name for name, tool in TOOLS.items() if tool.needs_kprobes]


def plan(kernels: list[str], quick: bool, host_kprobes: bool) -> list[Section]:
    """The sections of a report.

    On the host: info, maps, the in-kernel and tracepoint-triggered benchmark,
    the tracepoint variant of the stress check (or the kprobe one when the
    host has kprobes) and the bcc tools that can attach.  In the test VM, for
    each kernel: info and maps, the kprobe stress check, the kprobe-triggered
    benchmark and the kprobe-based bcc tools.  ``quick`` keeps the whole
    report to about 3 minutes on 2 CPUs (one small benchmark, one bcc tool,
    in the VM only info, maps and the stress check); the default to about 15.
    """
    entries = "10000" if quick else "100000"
    duration = "3" if quick else "10"
    bench = (["--types", "hash", "--cpus", "1", "--max-entries", "1000", "--runs", "3"]
             if quick else
             ["--cpus", "1,2", "--max-entries", "1000,100000", "--runs", "3"])
    tools = ["--tools", "runqlat", "--runs", "1", "--duration", "1"] if quick else \
        ["--runs", "2", "--duration", "2"]
    sections = [
        Section("info", "host", ["info", "--json"], 60),
        Section("maps", "host", ["maps", "--json", "--max-entries", entries], 300),
        Section("bench", "host",
                ["bench", "--mode", "both", *bench,
                 "--json", "{out}/bench.json", "--plot", "{out}/bench.png"],
                600, json_files=("bench.json",)),
        Section("stress", "host",
                ["stress", "--duration", duration, "--json", "--force"]
                + ([] if host_kprobes else ["--tracepoints"]), 300),
        Section("bcc-compare", "host", ["bcc-compare", "--json", *tools], 600),
    ]
    # 10000 entries in the VM: filling maps from Python under TCG emulation
    # costs about 40x what it does on the host.
    guest_facts = ('python3 -m pybpfmap info --json > "$PYBPFMAP_RESULTS/info.json" && '
                   'python3 -m pybpfmap maps --json --max-entries 10000 '
                   '> "$PYBPFMAP_RESULTS/maps.json"')
    for kernel in kernels:
        sections.append(Section(
                "info+maps", kernel,
                ["vm", "run", "--kernel", kernel, "--quiet", "--results", "{out}",
                 "--", "sh", "-c", guest_facts], 600, json_files=("info.json", "maps.json")))
        sections.append(Section("stress", kernel, ["stress", "--kernel", kernel,
                                                   "--duration", duration, "--json"], 900))
        if not quick:
            sections += [
                Section("bench", kernel,
                        ["bench", "--kernel", kernel, "--mode", "syscall", "--types", "hash",
                         "--cpus", "1,2", "--max-entries", "1000", "--runs", "3",
                         "--json", "{out}/bench.json", "--plot", "{out}/bench.png"],
                        900, json_files=("bench.json",)),
                Section("bcc-compare", kernel,
                        ["bcc-compare", "--kernel", kernel, "--json", "--runs", "1",
                         "--duration", "2", "--tools", *_kprobe_tools()], 900),
            ]
    return sections
