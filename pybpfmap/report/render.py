"""``report.md``: each section rendered by its command, and one table across kernels.

The report only composes: every command renders its own records
(``render_markdown``); this module builds the across-kernels table from
those records — era, kprobes, probeable unlock functions, each stress
scenario's outcome against its prediction, the prealloc ÷ NO_PREALLOC cost at
1 CPU, memory per allocation mode at the same max_entries — and the table of
how long each section took against its budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pybpfmap import commits, era, footprint, kernel
from pybpfmap.bcc_compare import result as bcc
from pybpfmap.bench import record as bench
from pybpfmap.bench import table as bench_table
from pybpfmap.bench.record import Mode, pre_no_ratio
from pybpfmap.output import md_table
from pybpfmap.report.plan import BENCH_ENTRIES, MAPS_ENTRIES
from pybpfmap.report.run import SectionResult
from pybpfmap.stress import records as stress_records


@dataclass(frozen=True)
class Renderer:
    """How a command's JSON document becomes records and Markdown."""

    load: Callable[[Any], list]
    markdown: Callable[[list], str]


def renderers() -> dict[str, Renderer]:
    return {"info": Renderer(kernel.load, kernel.render_markdown),
            "maps": Renderer(footprint.load, footprint.render_markdown),
            "bench": Renderer(bench.load, bench_table.render_markdown),
            "stress": Renderer(stress_records.load, stress_records.render_markdown),
            "bcc-compare": Renderer(bcc.load, bcc.render_markdown)}


@dataclass
class Report:
    """Everything a report found (``results.json``)."""

    generated: str
    command: str
    host_release: str
    places: list[str]
    seconds: float
    sections: list[SectionResult]


def _records(report: Report, name: str, where: str) -> list:
    load = renderers()[name].load
    return [rec for s in report.sections if s.name == name and s.where == where
            and s.data is not None for rec in load(s.data)]


def _stress_cell(runs: list, scenario: str) -> str | None:
    rows = [r for run in runs for r in run.rows if r.scenario == scenario]
    if not rows:
        return None
    counts: dict[str, list[str]] = {}
    for r in rows:
        counts.setdefault(r.outcome, []).append(r.kind)
    parts = []
    for outcome, kinds in counts.items():
        shown = f" ({', '.join(kinds)})" if outcome != "PASS" else ""
        parts.append(f"{len(kinds)} {outcome}{shown}")
    unexpected = [r.kind for r in rows if r.as_predicted is False]
    variant = f" [{rows[0].variant} variant]" if rows[0].variant_kind.weaker else ""
    errnos = sorted({e for r in rows for errs in r.errors.values() for e in errs})
    return (", ".join(parts) + (f"; errors {', '.join(errnos)}" if errnos else "")
            + ("; as predicted" if not unexpected else f"; UNEXPECTED: {', '.join(unexpected)}")
            + variant)


def _memory_cell(maps: list, prealloc: bool, stage: str) -> str | None:
    rec = next((m for m in maps if m.type == "hash" and m.prealloc is prealloc
                and not m.skipped and m.max_entries == MAPS_ENTRIES), None)
    if rec is None or stage not in rec.memory:
        return None
    mem = rec.memory[stage]
    if mem.memcg is not None:
        return f"{mem.memcg / 2**20:.2f}"
    return f"{mem.system / 2**20:.2f} (system-wide)"


def across_kernels(report: Report) -> str:
    """One row per place measured."""
    rows = []
    for where in report.places:
        info = _records(report, "info", where)
        k = info[0] if info else None
        stress = _records(report, "stress", where)
        maps = _records(report, "maps", where)
        ratio = pre_no_ratio(_records(report, "bench", where), mode=Mode.INKERNEL,
                                   type="hash", cpus=1, max_entries=BENCH_ENTRIES)
        release = k.kernel_release if k else (stress[0].kernel_release if stress else None)
        rows.append([
            where, release, era.era_of(release).name if release else None,
            ("yes" if k.kprobes else "no") if k else None,
            (", ".join(k.unlock_symbols) or "none") if k else None,
            _stress_cell(stress, "allocator"), _stress_cell(stress, "reentry"),
            None if ratio is None else f"{ratio:.2f}x",
            _memory_cell(maps, True, "full"), _memory_cell(maps, False, "empty"),
            _memory_cell(maps, False, "full")])
    return md_table(["where", "kernel", "era", "kprobes", "probeable unlock functions",
                     "stress: allocator", "stress: re-entry",
                     f"prealloc ÷ NO_PREALLOC speed (inkernel, hash, 1 CPU, "
                     f"{BENCH_ENTRIES} entries)",
                     f"hash prealloc MiB (full, {MAPS_ENTRIES})",
                     f"hash NO_PREALLOC MiB (empty, {MAPS_ENTRIES})",
                     f"hash NO_PREALLOC MiB (full, {MAPS_ENTRIES})"], rows) + (
        "\nMemory is what the memory cgroup charged for the map (kernel memory of a fresh "
        "child cgroup); \"system-wide\" marks kernels that charge BPF maps to no cgroup "
        f"(before {commits.MEMCG.cite()}), where /proc/meminfo's Slab + Percpu + VmallocUsed "
        "deltas stand in. Stress cells count rows by outcome; the era's prediction for "
        "each row is in its section.\n")


def era_notes(report: Report) -> str:
    out = []
    for where in report.places:
        info = _records(report, "info", where)
        if not info:
            continue
        release = info[0].kernel_release
        out.append(f"**{where} ({release})**\n")
        out += [f"- {line}" for line in era.expectations(release)]
        out.append("")
    return "\n".join(out) + "\n"


def budgets(report: Report) -> str:
    rows = [[s.key, s.seconds, s.budget, "over budget" if s.seconds > s.budget else "ok"]
            for s in report.sections]
    total = sum(s.seconds for s in report.sections)
    return md_table(["section", "seconds", "budget", ""], rows) + f"\nTotal {total:.0f} s.\n"


def render(report: Report) -> str:
    """The whole report as Markdown."""
    parts = [f"# pybpfmap report\n\nGenerated {report.generated} by `{report.command}` on "
             f"{report.host_release}.  Every figure below was measured in this run; the raw "
             "data is in `results.json`, each command's output in its folder.  Figures from a "
             "test VM under TCG are emulated, not hardware figures.\n"]
    failed = [s for s in report.sections if s.error]
    if failed:
        parts.append("## Sections that failed\n\n" + md_table(
            ["section", "error"], [[s.key, s.error] for s in failed]))
    parts.append("## Across kernels\n\n" + across_kernels(report))
    parts.append("## What each kernel era predicts\n\n" + era_notes(report))
    r = renderers()
    for s in report.sections:
        body = (f"`pybpfmap {' '.join(s.argv)}` — {s.seconds} s (budget {s.budget:.0f} s), "
                f"output in `{s.folder}/`\n\n")
        if s.data is None:
            body += f"No result: {s.error}\n"
        else:
            body += r[s.name].markdown(r[s.name].load(s.data))
        for png in s.plots:
            body += f"\n![{s.key}]({png})\n"
        parts.append(f"## {s.key}\n\n{body}")
    parts.append("## Time per section\n\n" + budgets(report))
    return "\n".join(parts)
