"""What a stress run found: one :class:`StressRow` per (scenario, map kind),
in a :class:`StressRun`; and how they are shown.

A row's ``outcome`` is what happened — ``PASS`` (ran the whole duration,
responsive, no unexplained splat, every probe fired, every error explained),
``DEADLOCK`` (the guest, or one of its CPUs, locked up: ``evidence`` says
where), ``REFUSED`` (the kernel would not load or attach it: ``errors`` has
the errno), ``FAIL`` (anything else, with ``reasons``) or ``SKIPPED`` (not
applicable here, with the reason) — next to the era's ``prediction`` and
whether the outcome ``as_predicted``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pybpfmap.errors import errno_by_name, errno_name
from pybpfmap.guest import Accel
from pybpfmap.kfacts import FactRecord, Source
from pybpfmap.output import md_table, text_table
from pybpfmap.records import from_json
from pybpfmap.splats import Splat
from pybpfmap.stress.latency import Latency
from pybpfmap.stress.probes import PROBE_KINDS, ProbeKind
from pybpfmap.vm.watchdog import Evidence

PASS, DEADLOCK, REFUSED, FAIL, SKIPPED = "PASS", "DEADLOCK", "REFUSED", "FAIL", "SKIPPED"
# Exit statuses of `pybpfmap stress`: every row as predicted and no deadlock;
# unexpected outcome (or a pybpfmap error); every row as predicted but some map
# kinds deadlock (a correct measurement: those kinds are unsafe here).
EXIT_AS_PREDICTED, EXIT_UNEXPECTED, EXIT_UNSAFE = 0, 1, 3
# What a counted map op returned, as records name it: "ok", an errno's name,
# or "other" (an errno beyond the counters whose value was not kept).
OK, OTHER = "ok", "other"


def result_name(err: int | None) -> str:
    """How a record names a counted result: "ok" for 0, the errno's name, or
    "other" for None (an errno the counters did not keep)."""
    if err is None:
        return OTHER
    return OK if err == 0 else errno_name(err)


def result_errno(name: str) -> int | None:
    """The errno a record's result name stands for (0 for "ok"), the inverse of
    :func:`result_name`; None for "other"."""
    return 0 if name == OK else errno_by_name(name)


@dataclass
class ProbeStats:
    """One attach point of a row: what its program did."""

    probe: str
    kind: str                         # a probe kind's name: kprobe, tracepoint, raw_tp
    events: int = 0                   # handler runs that did their map ops
    results: dict[str, dict[str, int]] = field(default_factory=dict)  # op -> result name -> n
    prog_run_cnt: int | None = None
    prog_run_time_ns: int | None = None
    recursion_misses: int | None = None   # None: this kernel does not count it for this type
    kprobe_hits: int | None = None
    kprobe_nmissed: int | None = None
    latency: Latency | None = None    # of its updates, where the program timed them

    def errors(self) -> dict[str, dict[str, int]]:
        return {op: errs for op, res in self.results.items()
                if (errs := {e: n for e, n in res.items() if e != OK})}


@dataclass
class VmSummary:
    """The VM runner's view of the boot a row ran in."""

    outcome: str
    message: str
    accel: Accel
    kernel: str
    kernel_release: str | None
    results_dir: str
    boot_seconds: float | None
    seconds: float


@dataclass
class StressRow:
    """One (scenario, map kind) group."""

    scenario: str              # a scenario's name: allocator, reentry
    kind: str                  # e.g. hash/no_prealloc/2k
    type: str
    prealloc: bool
    value_size: int
    variant: str               # its probes' kind: kprobe, tracepoint (the weaker variant)
    probe: str                 # the attach points, comma-separated
    outcome: str = FAIL
    reasons: list[str] = field(default_factory=list)
    prediction: str = ""
    prediction_why: str = ""
    prediction_commits: list[str] = field(default_factory=list)
    as_predicted: bool | None = None
    seconds: float | None = None      # from the first attach to the end (or the hang)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)   # op -> errno name -> n
    explained: dict[str, str] = field(default_factory=dict)           # "op:errno" -> why
    events: int = 0
    per_probe: list[ProbeStats] = field(default_factory=list)
    heartbeat_max_delay_s: float | None = None
    workloads: dict[str, Any] = field(default_factory=dict)
    splats: list[Splat] = field(default_factory=list)
    excused_splats: list[Splat] = field(default_factory=list)
    evidence: Evidence | None = None
    vm: VmSummary | None = None
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.scenario} {self.kind}"

    @property
    def variant_kind(self) -> ProbeKind:
        return PROBE_KINDS.named(self.variant)

    def counted_errnos(self) -> set[int]:
        """Every errno some op of the row returned ("other" has none)."""
        return {e for errs in self.errors.values() for name in errs
                if (e := result_errno(name)) is not None}


@dataclass
class StressRun:
    """Everything one ``pybpfmap stress`` found on one kernel."""

    kernel_release: str
    where: str
    era: str
    duration_s: float
    isolated: bool | None      # one boot per row; None: per risky row, one for the rest
    expectations: list[str]
    rows: list[StressRow]
    unavailable: dict[str, str] = field(default_factory=dict)   # probe -> why not
    inject: str | None = None
    accel: Accel | None = None
    note: str = ""
    facts: list[FactRecord] = field(default_factory=list)   # the era facts, probed or not

    def unexpected(self) -> list[StressRow]:
        return [r for r in self.rows if r.as_predicted is False]

    def exit_status(self) -> int:
        if self.unexpected() or not self.rows:
            return EXIT_UNEXPECTED
        if any(r.outcome == DEADLOCK for r in self.rows):
            return EXIT_UNSAFE
        return EXIT_AS_PREDICTED

    def answer(self) -> list[str]:
        """The user's question, answered: which map kinds are safe to update from
        these probes here, which fail with which errno, which deadlock."""
        out = []
        for scenario in dict.fromkeys(r.scenario for r in self.rows):
            rows = [r for r in self.rows if r.scenario == scenario]
            safe = [r.kind for r in rows if r.outcome == PASS and not r.errors]
            fails = [f"{r.kind} ({_errs(r.errors)})" for r in rows
                     if r.outcome == PASS and r.errors]
            dead = [r.kind for r in rows if r.outcome == DEADLOCK]
            refused = [f"{r.kind} ({_errs(r.errors)})" for r in rows if r.outcome == REFUSED]
            other = [f"{r.kind} ({r.outcome})" for r in rows
                     if r.outcome in (FAIL, SKIPPED)]
            parts = [f"safe: {', '.join(safe)}" if safe else "",
                     f"map ops fail: {', '.join(fails)}" if fails else "",
                     f"DEADLOCK: {', '.join(dead)}" if dead else "",
                     f"refused at load: {', '.join(refused)}" if refused else "",
                     f"not measured: {', '.join(other)}" if other else ""]
            out.append(f"{scenario} on {self.kernel_release}: "
                       + "; ".join(p for p in parts if p))
        return out


def _errs(errors: dict[str, dict[str, int]]) -> str:
    parts = [f"{op} {err}x{n}" for op, errs in errors.items() for err, n in errs.items()]
    return ", ".join(parts) or "-"


def load(data: list) -> list[StressRun]:
    """A stress --json document: one run per kernel."""
    return [from_json(StressRun, d) for d in data]


def _seconds(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _row_cells(r: StressRow) -> list[Any]:
    mark = "" if r.as_predicted is None else (" (as predicted)" if r.as_predicted
                                             else " (UNEXPECTED)")
    return [r.scenario, r.kind, r.outcome + mark, r.prediction, _seconds(r.seconds),
            r.events, _errs(r.errors)]


HEADERS = ["scenario", "kind", "outcome", "prediction", "seconds", "events", "errors"]


def render_text(runs: list[StressRun]) -> str:
    out = []
    for run in runs:
        out.append(f"pybpfmap stress: kernel {run.kernel_release} ({run.where}"
                   + (f", {run.accel}" if run.accel else "") + f"), era {run.era}, "
                   f"{run.duration_s:g} s per row, " + _boots(run))
        if run.note:
            out.append(f"NOTE: {run.note}")
        if run.inject:
            out.append(f"NEGATIVE CONTROL: --inject {run.inject} (this run is meant to FAIL)")
        out += [f"  era: {e}" for e in run.expectations]
        probed = [f"{f.commit} {'present' if f.present else 'absent'} ({f.how})"
                  for f in run.facts if f.source is Source.PROBED]
        out += [f"  probed: {p}" for p in probed]
        out.append("")
        out.append(text_table(HEADERS, [_row_cells(r) for r in run.rows]).rstrip())
        for probe, why in run.unavailable.items():
            out.append(f"  not probed: {probe}: {why}")
        for r in run.rows:
            out += _row_details(r)
        out.append("")
        out += [f"answer: {a}" for a in run.answer()]
        out.append("")
    return "\n".join(out) + "\n"


def _boots(run: StressRun) -> str:
    if not run.where.startswith("vm:"):
        return "the rows in turn, here"
    if run.isolated is None:
        return "one VM boot per row predicted to deadlock, one for the rest"
    return "one VM boot per row" if run.isolated else "one VM boot for all rows"


def _row_details(r: StressRow) -> list[str]:
    out = []
    head = f"  {r.label}:"
    if r.note:
        out.append(f"{head} {r.note}")
    if r.prediction_why:
        out.append(f"{head} predicted {r.prediction}: {r.prediction_why}")
    for reason in r.reasons:
        out.append(f"{head} - {reason}")
    for key, why in r.explained.items():
        out.append(f"{head} explained {key}: {why}")
    for p in r.per_probe:
        miss = "not counted" if p.recursion_misses is None else str(p.recursion_misses)
        out.append(f"{head}   {p.kind} {p.probe}: events {p.events}, errors "
                   f"{_errs(p.errors())}, prog runs {_num(p.prog_run_cnt)}, kprobe hits "
                   f"{_num(p.kprobe_hits)} nmissed {_num(p.kprobe_nmissed)}, "
                   f"recursion_misses {miss}")
        if p.latency is not None:
            out.append(f"{head}   {p.kind} {p.probe}: update latency {p.latency.brief()}")
    nmi = r.workloads.get("nmi")
    if nmi:
        inside = ", ".join(f"{k} {v}" for k, v in nmi.get("inside_holder", {}).items()) or "none"
        out.append(f"{head}   NMIs asked {nmi.get('rate_asked'):g}/s; the NMI program's updates "
                   f"that landed inside the holder's update or delete: {inside}")
    for s in r.splats:
        out.append(f"{head} SPLAT ({s.kind}): {s.line.strip()}")
    for s in r.excused_splats:
        out.append(f"{head} excused splat ({s.kind}): {s.line.strip()}")
    if r.evidence is not None:
        out += [f"{head}   {line}" for line in r.evidence.text().splitlines()]
    if r.vm is not None:
        out.append(f"{head} VM: {r.vm.outcome}: {r.vm.message} (results {r.vm.results_dir})")
    return out


def _num(v: object) -> str:
    return "-" if v is None else str(v)


def render_markdown(runs: list[StressRun]) -> str:
    out = []
    for run in runs:
        rows = []
        for r in run.rows:
            why = "; ".join(r.reasons)
            if r.evidence is not None:
                why = (why + "; " if why else "") + r.evidence.brief()
            rows.append([*_row_cells(r), why or None])
        out.append(f"**{run.kernel_release}** ({run.where}), {run.duration_s:g} s per row, "
                   f"{_boots(run)}\n")
        if run.note:
            out.append(f"Note: {run.note}\n")
        out.append(md_table([*HEADERS, "why"], rows))
        out += [f"- {a}" for a in run.answer()]
        out.append("")
    return "\n".join(out)
