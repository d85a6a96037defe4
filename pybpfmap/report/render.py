"""``report.md``: each section rendered by its command, and one table across kernels.

The report only composes: every command renders its own records
(``render_markdown``); this module builds the across-kernels table from
those records — era, kprobes, probeable unlock functions, each stress
scenario's outcome against its prediction, the prealloc ÷ NO_PREALLOC cost at
1 CPU, memory per allocation mode at the same max_entries — and the table of
how long each section took against its budget.  A merged report spans
machines (:mod:`.pool`): each machine's figures stay in its own rows and
sections, labelled ``M1``, ``M2``..., repeat runs of one machine pooled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pybpfmap import commits, enomem, era, footprint, kernel
from pybpfmap.bcc_compare import result as bcc
from pybpfmap.bench import record as bench
from pybpfmap.bench import table as bench_table
from pybpfmap.bench.record import Mode, pre_no_ratio
from pybpfmap.guest import Accel
from pybpfmap.kfacts import KernelFacts
from pybpfmap.output import human_ns, md_table
from pybpfmap.report import answer
from pybpfmap.report.plan import BENCH_ENTRIES, FROM_BPF, MAPS_ENTRIES
from pybpfmap.report.pool import Group, Identity, Labels, groups, identity, not_averaged, pool
from pybpfmap.report.run import SectionResult
from pybpfmap.stress import records as stress_records
from pybpfmap.stress.scenarios import SCENARIOS


@dataclass(frozen=True)
class Renderer:
    """How a command's JSON document becomes records and Markdown."""

    load: Callable[[Any], list]
    markdown: Callable[[list], str]
    accel: Callable[[Any], Accel | None]   # how qemu ran a record's guest (None: unsaid)


def renderers() -> dict[str, Renderer]:
    return {"info": Renderer(kernel.load, kernel.render_markdown, lambda r: r.accel),
            "maps": Renderer(footprint.load, footprint.render_markdown, lambda r: None),
            FROM_BPF: Renderer(enomem.load, enomem.render_markdown, lambda r: None),
            "bench": Renderer(bench.load, bench_table.render_markdown,
                              lambda r: r.machine.accel),
            "stress": Renderer(stress_records.load, stress_records.render_markdown,
                               lambda r: r.accel),
            "bcc-compare": Renderer(bcc.load, bcc.render_markdown, lambda r: r.accel)}


def place_accel(sections: list[SectionResult], where: str) -> Accel | None:
    """How qemu ran the guest at ``where``, as its records say (None: the host,
    or no record said)."""
    r = renderers()
    return next((a for s in sections if s.where == where and s.data is not None
                 for rec in r[s.name].load(s.data) if (a := r[s.name].accel(rec))), None)


@dataclass
class Report:
    """Everything a report found (``results.json``)."""

    generated: str
    command: str
    host_release: str
    places: list[str]
    seconds: float
    sections: list[SectionResult]


def _records(sections: list[SectionResult] | tuple[SectionResult, ...], name: str,
             where: str | None = None) -> list:
    """The records of the ``name`` sections (at ``where``), repeat runs pooled:
    ``sections`` are one machine's."""
    load = renderers()[name].load
    return pool(name, [load(s.data) for s in sections if s.name == name
                       and (where is None or s.where == where) and s.data is not None])


def _places(report: Report) -> list[tuple[str, Identity, list[SectionResult]]]:
    """(where, machine, its sections) in the order of ``report.places``."""
    out = []
    for where in report.places:
        by: dict[Identity, list[SectionResult]] = {}
        for s in report.sections:
            if s.where == where:
                by.setdefault(identity(s), []).append(s)
        out += [(where, ident, ss) for ident, ss in by.items()] or [(where, (None, ""), [])]
    return out


def _origin(where: str, sections: list[SectionResult]) -> str:
    """``where`` as the table names it: a kernel you bring (``--kernel PATH``) by
    its release and where it came from."""
    for s in sections:
        if "--kernel" in s.argv:
            given = s.argv[s.argv.index("--kernel") + 1]
            if given != where:
                return f"{where} (from {given})"
    return where


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
    worst = max((p.latency.max_ns for r in rows for p in r.per_probe
                 if p.latency is not None and p.latency.max_ns), default=None)
    return (", ".join(parts) + (f"; errors {', '.join(errnos)}" if errnos else "")
            + (f"; worst update {human_ns(worst)}" if worst else "")
            + ("; as predicted" if not unexpected else f"; UNEXPECTED: {', '.join(unexpected)}")
            + variant)


def _memory_cell(maps: list, prealloc: bool, stage: str) -> str | None:
    rec = next((m for m in maps if m.type == "hash" and m.prealloc is prealloc
                and not m.skipped and m.max_entries == MAPS_ENTRIES), None)
    if rec is None or stage not in rec.memory:
        return None
    mem = rec.memory[stage]
    if mem.kernel is None:
        return None
    return f"{mem.kernel / 2**20:.2f}" + ("" if rec.method.startswith("memory cgroup")
                                           else " (ledger)")


def _facts(info: list, stress: list) -> KernelFacts | None:
    """The era facts the records carry: the info record's (probed in the place
    measured), else a stress run's, else from the release alone."""
    if info:
        return info[0].kernel_facts()
    if stress:
        run = stress[0]
        return KernelFacts.from_records(run.kernel_release, False, run.facts)
    return None


def across_kernels(report: Report) -> str:
    """One row per place measured, and per machine that measured it."""
    labels = Labels(report.sections)
    rows = []
    for where, ident, sections in _places(report):
        info = _records(sections, "info", where)
        k = info[0] if info else None
        stress = _records(sections, "stress", where)
        maps = _records(sections, "maps", where)
        ratio = pre_no_ratio(_records(sections, "bench", where), mode=Mode.INKERNEL,
                             type="hash", cpus=1, max_entries=BENCH_ENTRIES)
        release = k.kernel_release if k else (stress[0].kernel_release if stress else None)
        facts = _facts(info, stress)
        rows.append([
            _origin(where, sections), *([labels(ident)] if labels.many else []), release,
            era.era_of(facts).name if facts else None,
            ("yes" if k.kprobes else "no") if k else None,
            (", ".join(k.unlock_symbols) or "none") if k else None,
            *(_stress_cell(stress, name) for name in SCENARIOS),
            None if ratio is None else f"{ratio:.2f}x",
            _memory_cell(maps, True, "full"), _memory_cell(maps, False, "empty"),
            _memory_cell(maps, False, "full")])
    return md_table(["where", *(["machine"] if labels.many else []), "kernel", "era", "kprobes",
                     "probeable unlock functions",
                     *(f"stress: {name}" for name in SCENARIOS),
                     f"prealloc ÷ NO_PREALLOC speed (inkernel, hash, 1 CPU, "
                     f"{BENCH_ENTRIES} entries)",
                     f"hash prealloc MiB (full, {MAPS_ENTRIES})",
                     f"hash NO_PREALLOC MiB (empty, {MAPS_ENTRIES})",
                     f"hash NO_PREALLOC MiB (full, {MAPS_ENTRIES})"], rows) + (
        "\nMemory is the map's kernel memory: what its memory cgroup was charged, or "
        "\"(ledger)\" on kernels that charge BPF maps to no cgroup "
        f"(before {commits.MEMCG.cite()}): the allocations its bpf(2) calls made, from the "
        "kmem and percpu tracepoints and /proc/vmallocinfo. Stress cells count rows by "
        "outcome, with the errnos counted and "
        "the longest update a program timed (the NMI and writers scenarios); the era's "
        "prediction for "
        "each row is in its section.\n")


def answer_places(report: Report) -> list[answer.Place]:
    """Every place measured, on each machine, with its records by command."""
    out = []
    labels = Labels(report.sections)
    for where, ident, sections in _places(report):
        info = _records(sections, "info", where)
        stress = _records(sections, "stress", where)
        release = info[0].kernel_release if info else (
            stress[0].kernel_release if stress else None)
        facts = _facts(info, stress)
        shown = _origin(where, sections) + (f" ({labels(ident)})" if labels.many else "")
        out.append(answer.Place(shown, release, era.era_of(facts).name if facts else None,
                                info, _records(sections, "maps", where),
                                _records(sections, FROM_BPF, where),
                                _records(sections, "bench", where), stress))
    return out


def era_notes(report: Report) -> str:
    out, seen = [], set()
    for where, _, sections in _places(report):
        info = _records(sections, "info", where)
        if not info or (where, info[0].kernel_release) in seen:
            continue
        release = info[0].kernel_release
        seen.add((where, release))
        out.append(f"**{where} ({release})**\n")
        out += [f"- {line}" for line in era.expectations(info[0].kernel_facts())]
        out.append("")
    return "\n".join(out) + "\n"


def machines(report: Report) -> str:
    """Which machine is which label, and which sections were measured on more
    than one (their absolute figures shown per machine, never averaged)."""
    labels = Labels(report.sections)
    accels: dict[tuple, set[str]] = {}
    for s in report.sections:
        if s.machine is not None:
            accels.setdefault(s.machine.hardware, set()).update(
                [str(s.machine.accel)] if s.machine.accel else [])
    rows = [[labels.number(m), m.cpu_model or "unknown", m.cores, m.host_kernel,
             ", ".join(sorted(accels[hw])) or None] for hw, m in labels.hosts.items()]
    rows += [[labels((None, run)), "not recorded (an older results.json)", None, None, None]
             for run in labels.unknown]
    text = md_table(["machine", "CPU model", "cores", "host kernel", "test VM accel"], rows)
    apart = not_averaged(groups(report.sections))
    if apart:
        text += ("\nNot averaged across machines: " + "; ".join(
            f"`{key}` ({', '.join(labels(g.machine) for g in gs)})" for key, gs in apart.items())
            + ". Absolute figures (ns per triple, events/s, seconds) of different machines "
            "are never averaged: each machine's are in its own section below and its own "
            "row of the across-kernels table, where the unitless ratios stand side by "
            "side.\n")
    pooled = [g for g in groups(report.sections) if len(g.sections) > 1]
    if pooled:
        text += ("\nPooled repeat runs of one machine: " + "; ".join(
            f"`{g.key}` on {labels(g.machine)} ({len(g.sections)} runs)" for g in pooled)
            + ". Their samples combine: each figure's median, min, max and CV are over the "
            "runs of every part; other records are listed side by side.\n")
    return text


def budgets(report: Report) -> str:
    labels = Labels(report.sections)
    rows = [[s.key, *([labels(identity(s))] if labels.many else []), s.seconds, s.budget,
             "over budget" if s.seconds > s.budget else "ok"] for s in report.sections]
    total = sum(s.seconds for s in report.sections)
    return md_table(["section", *(["machine"] if labels.many else []), "seconds", "budget", ""],
                    rows) + f"\nTotal {total:.0f} s.\n"


def section(g: Group, labels: Labels, machines_of_key: int) -> str:
    """One section on one machine: its runs, its (pooled) records, its plots."""
    head = f"## {g.key}" + (f" — {labels(g.machine)}" if labels.many else "")
    body = "".join(f"`pybpfmap {' '.join(s.argv)}` — {s.seconds} s (budget {s.budget:.0f} s), "
                   f"output in `{s.folder}/`\n\n" for s in g.sections)
    if machines_of_key > 1:
        body += (f"Measured on {machines_of_key} machines: these are {labels(g.machine)}'s "
                 "figures alone, not averaged with the others'.\n\n")
    if len(g.sections) > 1:
        body += (f"{len(g.sections)} runs of this machine, pooled: their samples combine "
                 "(median, min, max and CV over every run).\n\n")
    if any(s.data is not None for s in g.sections):
        body += renderers()[g.name].markdown(_records(g.sections, g.name))
    for s in g.sections:
        if s.data is None:
            body += f"No result: {s.error}\n"
    for png in (p for s in g.sections for p in s.plots):
        body += f"\n![{g.key}]({png})\n"
    return f"{head}\n\n{body}"


def draw_plots(report: Report, out) -> list[tuple[str, str]]:
    """The report's plots, one per question, written into ``out``: (file name,
    caption) for each that had something to plot.  Without matplotlib, none."""
    from pybpfmap.errors import EnvironmentProblem
    from pybpfmap.report import plots

    def every(name: str) -> list:   # each place's records, pooled only within it
        return [r for where, _, sections in _places(report)
                for r in _records(sections, name, where)]

    bench_recs = every("bench")
    jobs = [("speed-ratio.png", lambda p: plots.speed_ratio(bench_recs, p)),
            ("memory-per-mode.png",
             lambda p: plots.memory_per_mode(every("maps"), bench_recs, p)),
            ("update-latency.png", lambda p: plots.update_latency(every("stress"), p))]
    drawn = []
    for name, draw in jobs:
        try:
            caption = draw(out / name)
        except EnvironmentProblem:
            return drawn
        if caption:
            drawn.append((name, caption))
    return drawn


def render(report: Report, figures: list[tuple[str, str]] = ()) -> str:
    """The whole report as Markdown; ``figures``: :func:`draw_plots`' files and captions."""
    runs = len({s.run for s in report.sections})
    where = ("this run" if runs < 2 else
             f"one of the {runs} runs merged here (each section names its machine)")
    parts = [f"# pybpfmap report\n\nGenerated {report.generated} by `{report.command}` on "
             f"{report.host_release}.  Every figure below was measured in {where}; the raw "
             "data is in `results.json`, each command's output in its folder.  Figures from a "
             "test VM under TCG are emulated, not hardware figures.\n"]
    failed = [s for s in report.sections if s.error]
    if failed:
        parts.append("## Sections that failed\n\n" + md_table(
            ["section", "error"], [[s.key, s.error] for s in failed]))
    places = answer_places(report)
    parts.append("## The answer, per kernel\n\n" + answer.answer(places))
    parts.append("## The seed's claims, checked per kernel\n\n" + answer.claims(places))
    if figures:
        parts.append("## Plots\n\n" + "\n".join(f"![{name}]({name})\n\n{caption}\n"
                                                  for name, caption in figures))
    parts.append("## Machines\n\n" + machines(report))
    parts.append("## Across kernels\n\n" + across_kernels(report))
    parts.append("## What each kernel era predicts\n\n" + era_notes(report))
    labels, grouped = Labels(report.sections), groups(report.sections)
    apart = not_averaged(grouped)
    parts += [section(g, labels, len(apart.get(g.key, [g]))) for g in grouped]
    parts.append("## Time per section\n\n" + budgets(report))
    return "\n".join(parts)
