"""bcc-compare's records (the ``--json`` document) and how they are shown.

One :class:`BccRecord` per tool and place.  Throughput is workload
operations per second; the cost of a tool per event in a round is
``1/with_tool - 1/baseline`` seconds per operation (in ns), against that
round's own baseline window; the difference between the modes in a round is
``cost(NO_PREALLOC) - cost(shipped)`` = ``1/rate(NO_PREALLOC) - 1/rate(shipped)``
(the baseline cancels).  Each figure is the mean over rounds with a 95%
Student-t confidence interval (:func:`pybpfmap.stats.mean_ci`): rounds are
independent repetitions, paired within a round.  The verdict reads the
difference's interval: "NO_PREALLOC costs X ns/event more (95% CI a..b)"
when it excludes 0, "no significant difference" when it spans 0.

``status``: ``ok`` (measured), ``not_comparable`` (the rewrite changes
nothing: never a measurement), ``skipped`` (cannot run here, with the
reason) or ``failed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pybpfmap.bcc_compare.launcher import MODES
from pybpfmap.bcc_compare.measurement import Measurement, Window
from pybpfmap.bcc_compare.tools import Tool
from pybpfmap.guest import Accel
from pybpfmap.output import md_table, text_table
from pybpfmap.records import from_json
from pybpfmap.stats import MeanCI, mean_ci

CONFIDENCE = 0.95
OK, NOT_COMPARABLE, SKIPPED, FAILED = "ok", "not_comparable", "skipped", "failed"
STATUSES = (OK, NOT_COMPARABLE, SKIPPED, FAILED)

OPERATION = {
    "wakeups": "pipe round trip between two tasks on one CPU (2 wakeups)",
    "getpid": "libc getpid() call",
    "open": "open()+close() of /dev/null",
    "tcp_connect": "TCP connect+accept over loopback",
    "block_io": "4 KiB O_DIRECT read",
}


@dataclass
class KernelMap:
    """A map as the kernel describes it (bpf_map_info)."""

    id: int
    name: str
    type: int
    map_flags: int
    max_entries: int
    key_size: int
    value_size: int


@dataclass
class ModeResult:
    """One mode of a measured tool."""

    mode: str
    maps: dict[str, KernelMap]          # its BPF_HASH maps by name, read back from the kernel
    maps_unused_by_programs: list[str]  # maps no loaded program references
    attachments: int                    # probes the tool opened (what park/resume moved)
    start_s: float                      # seconds until its first line (compile + attach)
    with_tool: MeanCI                   # ops/s while attached
    overhead_ns: MeanCI                 # ns per event against the round's baseline
    output: str | None                  # the line showing its normal output
    output_lines: int

    @property
    def map_flags(self) -> dict[str, int]:
        return {name: m.map_flags for name, m in self.maps.items()}


@dataclass
class VmNote:
    """Where a record measured in the test VM came from."""

    kernel: str
    outcome: str
    message: str
    accel: Accel | None
    results_dir: str


@dataclass
class BccRecord:
    """One tool at one place: measured, not comparable, skipped or failed."""

    tool: str
    where: str                   # "host" or "vm:<catalog kernel>"
    kernel_release: str
    accel: Accel | None            # in the test VM: how qemu runs it (TCG: emulated)
    bcc: str                     # python3-bpfcc version: tools differ between versions
    status: str
    verdict: str
    reason: str | None = None
    attach: str = ""
    workload: str = ""
    operation: str = ""
    args: list[str] = field(default_factory=list)
    duration: float = 0.0        # seconds per window
    runs: int = 0                # rounds: windows per mode (and baselines)
    baseline: MeanCI | None = None           # ops/s without any tool
    shipped: ModeResult | None = None
    noprealloc: ModeResult | None = None
    difference_ns: MeanCI | None = None      # noprealloc - shipped, ns/event
    isolation: str = ""
    other_programs: int = 0      # BPF programs of others loaded during baselines
    windows: list[Window] = field(default_factory=list)
    start_deadline_s: float | None = None
    elapsed_s: float = 0.0
    vm: VmNote | None = None


def _fmt(x: float) -> str:
    return f"{x:.1f}" if abs(x) < 10 else f"{x:.0f}"


def ci_text(c: MeanCI, unit: str = "") -> str:
    """``412 (95% CI 377..447)``; just the mean when there is no interval."""
    if not c.defined:
        return f"{_fmt(c.mean)}{unit} (one run: no interval)"
    return (f"{_fmt(c.mean)}{unit} ({100 * c.confidence:.0f}% CI "
            f"{_fmt(c.low)}..{_fmt(c.high)})")  # type: ignore[arg-type]


def verdict(diff: MeanCI) -> str:
    """What the difference's confidence interval says."""
    if not diff.defined:
        return "no confidence interval from one run: no conclusion"
    ci = f"{100 * diff.confidence:.0f}% CI {_fmt(diff.low)}..{_fmt(diff.high)} ns"  # type: ignore[arg-type]
    if diff.spans_zero:
        return f"no significant difference ({ci})"
    more = "more" if diff.mean > 0 else "less"
    return f"NO_PREALLOC costs {_fmt(abs(diff.mean))} ns/event {more} ({ci})"


def overheads_ns(base: list[float], rates: list[float]) -> list[float]:
    """Per round: (1/with_tool - 1/baseline) seconds per operation, in ns."""
    return [(1.0 / w - 1.0 / b) * 1e9 for b, w in zip(base, rates, strict=True)]


def _rates(m: Measurement, slot: str) -> list[float]:
    by_round = {w.round: w for w in m.windows if w.slot == slot}
    return [by_round[r].rate for r in range(m.runs)]


def measured(m: Measurement, where: str, release: str, accel: Accel | None,
             bcc: str) -> BccRecord:
    """The record of a measured tool."""
    base = _rates(m, "baseline")
    over: dict[str, list[float]] = {}
    modes: dict[str, ModeResult] = {}
    for mode in MODES:
        run = m.modes[mode]
        rates = _rates(m, mode)
        over[mode] = overheads_ns(base, rates)
        modes[mode] = ModeResult(
            mode, {n: KernelMap(**r) for n, r in run.maps["maps"].items()},
            list(run.maps["unused"]), run.attachments, run.start_s,
            mean_ci(rates, CONFIDENCE), mean_ci(over[mode], CONFIDENCE), run.evidence,
            run.output_lines)
    diff = mean_ci([n - s for n, s in zip(over["noprealloc"], over["shipped"], strict=True)],
                   CONFIDENCE)
    rec = _base(m.tool, OK, verdict(diff), None, where, release, accel, bcc)
    rec.duration, rec.runs = m.duration, m.runs
    rec.baseline = mean_ci(base, CONFIDENCE)
    rec.shipped, rec.noprealloc = modes["shipped"], modes["noprealloc"]
    rec.difference_ns = diff
    rec.isolation, rec.other_programs = m.isolation, m.other_programs
    rec.windows, rec.start_deadline_s, rec.elapsed_s = m.windows, m.start_deadline_s, m.elapsed_s
    return rec


def not_run(tool: Tool, status: str, reason: str, where: str, release: str,
            accel: Accel | None, bcc: str) -> BccRecord:
    """A record for a tool not measured: not comparable, skipped or failed."""
    label = "not comparable" if status == NOT_COMPARABLE else status
    return _base(tool, status, f"{label}: {reason}", reason, where, release, accel, bcc)


def _base(tool: Tool, status: str, verdict_: str, reason: str | None, where: str,
          release: str, accel: Accel | None, bcc: str) -> BccRecord:
    return BccRecord(tool.name, where, release, accel, bcc, status, verdict_, reason,
                     tool.attach, tool.workload, OPERATION[tool.workload], list(tool.args))


def load(data: list) -> list[BccRecord]:
    """Records from a ``bcc-compare --json`` document."""
    return [from_json(BccRecord, r) for r in data]


# --- rendering -------------------------------------------------------------------


def flags_text(r: BccRecord) -> str | None:
    """``start 0x0 -> 0x1``: each map's kernel map_flags, shipped -> NO_PREALLOC."""
    if r.shipped is None or r.noprealloc is None:
        return None
    after = r.noprealloc.map_flags
    return ", ".join(f"{n} {f:#x}->{after.get(n, 0):#x}" if n in after else f"{n} {f:#x}->?"
                     for n, f in r.shipped.map_flags.items()) or "(no map found)"


def _row(r: BccRecord) -> list:
    if r.status != OK:
        return [r.tool, r.where, None, None, None, None, r.verdict]
    assert r.baseline and r.shipped and r.noprealloc
    return [r.tool, r.where, flags_text(r), round(r.baseline.mean),
            ci_text(r.shipped.overhead_ns), ci_text(r.noprealloc.overhead_ns), r.verdict]


HEADERS = ["tool", "where", "maps' kernel map_flags", "baseline ops/s",
           "shipped ns/event", "NO_PREALLOC ns/event", "verdict"]


def notes(records: list[BccRecord]) -> list[str]:
    """What the figures mean, how they were taken, and what to be careful about."""
    ok = [r for r in records if r.status == OK]
    lines = []
    if ok:
        lines.append("ns/event: extra time per workload operation with the tool attached "
                     "(1/with_tool - 1/baseline, per round); verdict: NO_PREALLOC minus "
                     "shipped, mean over rounds with a 95% t-interval; \"no significant "
                     "difference\" when the interval spans 0.")
    for r in ok:
        assert r.shipped and r.noprealloc
        lines.append(
            f"{r.tool} ({r.where}): event = {r.operation}; {r.runs} rounds of "
            f"{r.duration:g} s windows (baseline, shipped, NO_PREALLOC interleaved); start-up "
            f"{r.shipped.start_s:.1f} s / {r.noprealloc.start_s:.1f} s (deadline "
            f"{r.start_deadline_s or 0:.0f} s); {r.elapsed_s:.0f} s in all; isolation "
            f"{r.isolation}; output seen: {r.shipped.output!r}")
        for m in (r.shipped, r.noprealloc):
            if m.maps_unused_by_programs:
                lines.append(f"{r.tool} ({m.mode}): no loaded program uses "
                             f"{', '.join(m.maps_unused_by_programs)}: its flags cannot "
                             "change the cost here")
        if r.other_programs:
            lines.append(f"{r.tool} ({r.where}): {r.other_programs} other BPF programs were "
                         "loaded during its baselines: baselines may include their cost")
        if r.accel and r.accel.emulated:
            lines.append(f"{r.tool} ({r.where}): measured under {r.accel} (CPU emulation): "
                         "ns/event is not comparable with hardware")
    for r in records:
        if r.status != OK and r.elapsed_s:
            lines.append(f"{r.tool} ({r.where}): {r.status.replace('_', ' ')} after "
                         f"{r.elapsed_s:.0f} s")
        if r.vm is not None and r.status == FAILED:
            lines.append(f"{r.tool} ({r.where}): VM {r.vm.outcome}: console and dmesg in "
                         f"{r.vm.results_dir}")
    return lines


def render_text(records: list[BccRecord]) -> str:
    """The human table, one row per record, then the notes."""
    out = text_table(HEADERS, [_row(r) for r in records])
    extra = notes(records)
    return out + ("\n" + "\n".join(extra) + "\n" if extra else "")


def render_markdown(records: list[BccRecord]) -> str:
    """The report section: one row per record, then the notes as a list."""
    out = md_table(HEADERS, [_row(r) for r in records])
    extra = notes(records)
    return out + ("\n" + "".join(f"- {line}\n" for line in extra) if extra else "")
