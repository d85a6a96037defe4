"""The bench's two renderings of its records.

:func:`render_text` is the human table: for each map type, mode, max_entries
and fill, rows are the allocation modes and columns the CPU counts, shaped
like the table in Linux kernel commit 6c9059817432 ("bpf: pre-allocate hash
map elements") (in v4.6), with this kernel's prealloc / NO_PREALLOC ratio
beside the seed's, the independent clock under each figure, map_perf_test's
figure when it ran, and the memory each map cost.
:func:`render_markdown` is the report's section: the seed-shaped tables;
:func:`render_list` one Markdown row per record.
"""

from __future__ import annotations

from itertools import groupby

from pybpfmap import commits
from pybpfmap.bench.record import BenchRecord, pre_no_ratio
from pybpfmap.guest import Accel
from pybpfmap.maps import TYPES
from pybpfmap.output import human_bytes, md_table, text_table

# The seed's per-CPU events/s (millions), samples/bpf/map_perf_test, one
# update/lookup/delete round per event: pcpu_freelist (what preallocation
# became) and kmalloc (what BPF_F_NO_PREALLOC kept).
SEED_RATES = {1: (2.6, 1.8), 4: (2.0, 0.7), 8: (1.5, 0.4), 32: (0.49, 0.13)}
SEED_RATIOS = {k: pre / kmalloc for k, (pre, kmalloc) in SEED_RATES.items()}


def _m(rate: float | None) -> str:
    return "-" if rate is None else f"{rate / 1e6:.2f}M"


def _marks(r: BenchRecord) -> str:
    return ("!" if r.noisy else "") + ("✗" if r.flagged else "")


def _cell(r: BenchRecord) -> str:
    if r.refused is not None:
        return "refused"
    ns = r.ns_per_triple.median if r.ns_per_triple else None
    if r.mode.triggered:  # the trigger's rate is the figure, ns per triple from it
        return f"{_m(r.speed())} ({ns:.0f} ns){_marks(r)}"
    return f"{ns:.1f} ns {_m(r.speed())}{_marks(r)}"


def _clock_cell(r: BenchRecord) -> str:
    b = r.ns_per_triple_bpf_stats
    if b is None:
        return "-"
    agree = {True: "", False: " ≠", None: ""}[r.clocks_agree]
    return f"{b.median:.1f} ns{agree}"


def _bytes(n: int | None, estimate: bool = False) -> str:
    text = human_bytes(n)
    return "-" if text is None else ("~" if estimate else "") + text


def _header(r: BenchRecord) -> str:
    m = r.machine
    where = m.where + (f", {m.accel}" if m.accel else "") + \
        (f", virt {m.virt}" if m.virt != "none" and not m.where.startswith("vm:") else "")
    return f"kernel {m.kernel_release} ({where}), {m.online_cpus} online / " \
           f"{m.possible_cpus} possible CPUs, jit {m.bpf_jit_enable}, bpf_stats_enabled " \
           f"{'on' if m.bpf_stats_enabled else 'off'}"


def _workload(r: BenchRecord) -> str:
    what = (f"{r.triples_per_event} triple{'s' if r.triples_per_event != 1 else ''} per "
            f"{r.mode.per}, key {r.key}")
    if r.mode.triggered:
        what += f", trigger {r.trigger} ({r.trigger_loop})"
    return what


def _group_key(r: BenchRecord) -> tuple:
    order = {t: i for i, t in enumerate(TYPES)}
    return (r.machine.where, r.machine.kernel_release, order.get(r.type, 99), r.type,
            r.mode.value, r.max_entries, r.fill_percent)


def render_text(records: list[BenchRecord]) -> str:
    """The seed-shaped tables, one per (type, mode, max_entries, fill)."""
    out: list[str] = []
    last_header = None
    problems: list[str] = []
    estimate = noisy = False
    for _, group in groupby(sorted(records, key=_group_key), key=_group_key):
        group = list(group)
        first = group[0]
        if _header(first) != last_header:
            out.append(_header(first))
            last_header = _header(first)
        fill = (f"  fill {first.fill_percent}% ({first.resident_keys} resident keys, map "
                f"max_entries {first.map_max_entries})" if first.fill_percent else "")
        out.append(f"{first.type}  max_entries={first.max_entries}{fill}  "
                   f"{first.mode.title}")
        workloads = sorted({_workload(r) for r in group if r.refused is None})
        out.append("  " + "; ".join(workloads))
        cpus = sorted({r.cpus for r in group if r.cpus is not None})
        heads = ["", *(f"{k} CPU{'s' if k > 1 else ''}" for k in cpus), "memory", "peak",
                 "memlock"]
        rows = []
        refusals: list[str] = []   # and other lines under the table
        by_alloc: dict[bool, dict[int, BenchRecord]] = {}
        for prealloc in (True, False):
            recs = [r for r in group if r.prealloc is prealloc]
            if not recs:
                continue
            label = "prealloc" if prealloc else "no_prealloc"
            refused = next((r for r in recs if r.refused is not None), None)
            if refused is not None:
                rows.append([label, f"refused: {refused.refused.errno_name}",
                             *([""] * (len(cpus) + 2))])
                refusals.append(f"  {label}: {refused.refused.reason}")
                continue
            by_alloc[prealloc] = cells = {r.cpus: r for r in recs}
            mem = recs[0].memory
            estimate |= bool(mem and mem.memlock_is_estimate)
            rows.append([label, *(_cell(cells[k]) if k in cells else "-" for k in cpus),
                         _bytes(mem.kernel_after if mem else None),
                         _bytes(mem.peak if mem else None),
                         _bytes(mem.memlock_after if mem else None,
                                bool(mem and mem.memlock_is_estimate))])
            rows.append([f"  {first.mode.clock}", *(_clock_cell(cells[k]) if k in cells else "-"
                                                     for k in cpus), "", "", ""])
            if first.mode.triggered:
                rows.append(["  burst median", *(_burst_cell(cells.get(k)) for k in cpus),
                             "", "", ""])
            if any(r.peer for r in recs):
                rows.append([f"  {next(r.peer.tool for r in recs if r.peer)}",
                             *(_peer_cell(cells.get(k)) for k in cpus), "", "", ""])
            for r in recs:
                noisy |= r.noisy
                if r.verification and r.verification.problems:
                    problems += [f"{r.label} {r.mode} {r.cpus} CPU: {p}"
                                 for p in r.verification.problems]
            if not prealloc and recs[0].element_counter:
                refusals.append(f"  {label} element counter: {recs[0].element_counter}")
        if len(by_alloc) == 2:
            ratio = [pre_no_ratio(group, mode=first.mode, type=first.type, cpus=k,
                                  max_entries=first.max_entries,
                                  fill_percent=first.fill_percent) for k in cpus]
            rows.append(["pre/no ratio", *(f"{x:.2f}x" if x else "-" for x in ratio), "", "", ""])
            if any(r.peer for r in group):
                peer = [pre_no_ratio(group, mode=first.mode, type=first.type, cpus=k,
                                     max_entries=first.max_entries,
                                     fill_percent=first.fill_percent, peer=True) for k in cpus]
                rows.append(["  peer ratio", *(f"{x:.2f}x" if x else "-" for x in peer),
                             "", "", ""])
            rows.append(["seed ratio", *(f"{SEED_RATIOS[k]:.2f}x" if k in SEED_RATIOS else "-"
                                         for k in cpus), "", "", ""])
        smt = sorted({str(p) for r in group for p in r.smt_siblings})
        table = text_table(heads, rows)
        out += ["  " + line for line in table.rstrip("\n").splitlines()]
        out += refusals
        out.append("  " + _checks(group))
        if smt:
            out.append(f"  SMT siblings among the CPUs used: {', '.join(smt)}")
        out.append("")
    out += htab_mem_section(records)
    out += notes(records, estimate=estimate, noisy=noisy)
    if problems:
        out.append("✗ = the run did not prove itself (the figure is not to be trusted):")
        out += [f"  {p}" for p in problems]
    return "\n".join(out) + "\n"


def _burst_cell(r: BenchRecord | None) -> str:
    """The median burst's rate and the 10th-90th percentile bursts'."""
    if r is None or r.events_per_sec_burst is None:
        return "-"
    spread = (f" ({_m(r.burst_p10)[:-1]}-{_m(r.burst_p90)})"
              if r.burst_p10 is not None and r.burst_p90 is not None else "")
    return f"{_m(r.events_per_sec_burst.median)}{spread}"


def _checks(group: list[BenchRecord]) -> str:
    """One line: what the program counted against what was asked, in every run."""
    checked = [r.verification for r in group if r.verification is not None]
    if not checked:
        return "checks: none (refused)"
    events, triggers = sum(v.events for v in checked), sum(v.triggers for v in checked)
    failed = sum(n for v in checked for errs in v.failures.values() for n in errs.values())
    misses = [v.recursion_misses for v in checked if v.recursion_misses is not None]
    diff = events - triggers
    return (f"checks: {events:,} program runs for {triggers:,} triggers "
            f"({'equal' if not diff else f'{diff:+,}'}), "
            f"{failed:,} failed map calls, recursion_misses "
            f"{sum(misses) if misses else checked[0].recursion_misses_note}"
            + ("" if all(v.ok for v in checked) else "  ✗ see below"))


def _peer_cell(r: BenchRecord | None) -> str:
    if r is None or r.peer is None:
        return "-"
    ratio = f" x{r.peer.ratio:.2f}" if r.peer.ratio is not None else ""
    return f"{_m(r.peer.events_per_sec.median)}{ratio}"


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def htab_mem_section(records: list[BenchRecord]) -> list[str]:
    """The selftests' ``bench htab-mem`` beside pybpfmap, in its units: one
    row per record and use case."""
    recs = [r for r in records if r.htab_mem is not None]
    if not recs:
        return []
    first = recs[0].htab_mem
    out = [f"htab-mem beside pybpfmap: the selftests' bench from "
           f"{commits.HTAB_MEM_BENCH.cite()}; k ops/s per producer, op = "
           f"{first.op_batch or '?'} map calls; memory = its cgroup's mean memory.current "
           "after the warm-up and memory.peak, pybpfmap's = its map's, MiB",
           f"  {'; '.join(sorted({r.htab_mem.build for r in recs}))}"]
    heads = ["kernel", "alloc", "CPUs", "use case", "htab-mem k ops/s", "pybpfmap k ops/s",
             "ratio", "memory", "peak", "pybpfmap memory", "peak"]
    rows: list[list] = []
    skipped: list[str] = []
    unread: set[str] = set()
    for r in sorted(recs, key=lambda r: (r.machine.kernel_release, not r.prealloc, r.cpus)):
        h = r.htab_mem
        for run in h.runs:
            s = run.summary
            ratio = h.ratio(run)
            rows.append([r.machine.kernel_release, r.alloc, r.cpus, run.options.use_case,
                         f"{s.kops_per_producer:.2f} ± {s.kops_stddev:.2f}",
                         _f(h.pybpfmap_kops_per_producer),
                         "-" if ratio is None else f"{ratio:.2f}x",
                         _f(s.memory_mib if run.memory_known else None),
                         _f(s.peak_mib if run.peak_known else None),
                         _f(h.pybpfmap_memory_mib), _f(h.pybpfmap_peak_mib)])
        skipped += [f"  {r.machine.kernel_release} {r.alloc} {r.cpus} CPU: not run: {why}"
                    for why in h.skipped]
        unread |= {f for run in h.runs for f in run.unavailable}
    out += ["  " + line for line in text_table(heads, rows).rstrip("\n").splitlines()]
    out += skipped
    if unread:
        out.append(f"  - = htab-mem could not read {', '.join(sorted(unread))} (its cgroup v2 "
                   "has no memory controller: the memory cgroup is on v1 here)")
    out.append(f"  pybpfmap's event = {recs[0].triples_per_event} triples "
               f"({first.map_calls_per_event} map calls), in htab-mem's unit: events/s x "
               f"{first.map_calls_per_event} / {first.op_batch or '?'} / 1000; what else "
               "differs: --json htab_mem.differences")
    out.append("")
    return out


def notes(records: list[BenchRecord], *, estimate: bool, noisy: bool) -> list[str]:
    seed = ", ".join(f"{SEED_RATIOS[k]:.2f}x at {k}" for k in sorted(SEED_RATIOS))
    out = [f"seed ratios ({commits.PREALLOC.commit}, pcpu_freelist / kmalloc, per CPU count): "
           f"{seed}; since {commits.MEM_ALLOC.cite()} NO_PREALLOC no longer means kmalloc",
           "bpf_stats = the kernel's run_time_ns / run_cnt of the same programs, an "
           "independent clock (≠: more than 10% from the figure above it); in program = "
           "the same over the syscall mode's warm-up: the program's own time, without "
           "what the triple costs outside it (the trigger's path, deferred frees)",
           "memory = the map's kernel memory after the runs, peak = its high-water mark "
           "from creation on; memlock = fdinfo"]
    sources = sorted({f"{r.machine.where}: {r.memory.method}" for r in records if r.memory})
    out += [f"  memory read by {s}" for s in sources]
    if any(r.peer for r in records):
        out.append("map_perf_test = the kernel's samples/bpf/map_perf_test in the same boot, "
                   "M events/s per CPU and pybpfmap / it (see --json peer.differences)")
    if estimate:
        out.append(f"~ = fdinfo memlock is the kernel's estimate from max_entries, not usage "
                   f"(real since {commits.MEMORY_USAGE.cite()})")
    if noisy:
        out.append("! = runs disagree: coefficient of variation above 5% (see --json)")
    if any(r.machine.accel is not None and r.machine.accel.emulated for r in records):
        out.append("tcg = figures from an emulated CPU (QEMU TCG), not hardware figures")
    if any(r.machine.accel is Accel.TCG and (r.cpus or 0) > 1 for r in records):
        out.append("  single-threaded TCG runs every vCPU on one host thread, in turn: at k "
                   "CPUs each gets 1/k of the time, so a k-CPU figure shows time-sharing, not "
                   "contention (the burst median, while a vCPU runs, stays at the 1-CPU rate)")
    return out


def render_markdown(records: list[BenchRecord]) -> str:
    """The report's section: the seed-shaped tables (:func:`render_text`) as a
    preformatted block; every record's figures are in ``results.json`` (and
    :func:`render_list`)."""
    return "```\n" + render_text(records) + "```\n"


def render_list(records: list[BenchRecord]) -> str:
    """One Markdown row per record."""
    rows = []
    for r in sorted(records, key=lambda r: (*_group_key(r), not r.prealloc, r.cpus or 0)):
        m = r.machine
        where = m.where + (f" ({m.accel})" if m.accel else "")
        if r.refused is not None:
            rows.append([where, m.kernel_release, r.mode, r.type, r.alloc, r.max_entries,
                         r.fill_percent, None, None, None, None, None, None, None, None, None,
                         None, None, f"refused: {r.refused.errno_name}"])
            continue
        ns = r.ns_per_triple.median if r.ns_per_triple else None
        clock = r.ns_per_triple_bpf_stats.median if r.ns_per_triple_bpf_stats else None
        mem = r.memory
        verified = "yes" if not r.flagged else "no: " + "; ".join(r.verification.problems)
        rows.append([where, m.kernel_release, r.mode, r.type, r.alloc, r.max_entries,
                     r.fill_percent, r.cpus, r.triples_per_event, r.key, ns, clock,
                     None if r.speed() is None else round(r.speed() / 1e6, 3),
                     round(r.events_per_sec_burst.median / 1e6, 3)
                     if r.events_per_sec_burst else None,
                     round(r.peer.events_per_sec.median / 1e6, 3) if r.peer else None,
                     round(r.peer.ratio, 3) if r.peer and r.peer.ratio else None,
                     _kib(mem.kernel_after if mem else None),
                     _kib(mem.peak if mem else None),
                     (_kib(mem.memlock_after) if mem else None)
                     if not (mem and mem.memlock_is_estimate)
                     else f"{_kib(mem.memlock_after)} (estimate)",
                     verified + ("" if not r.noisy else " (cv > 5%)")])
    heads = ["where", "kernel", "mode", "type", "alloc", "max_entries", "fill %", "CPUs",
             "triples/event", "key", "ns/triple", "bpf_stats ns", "M/s per CPU",
             "burst median M/s", "map_perf_test M/s", "ratio", "memory KiB", "peak KiB",
             "memlock KiB", "verified"]
    return md_table(heads, rows) + "\n" + "\n".join(
        notes(records, estimate=any(r.memory and r.memory.memlock_is_estimate
                                    for r in records),
              noisy=any(r.noisy for r in records))) + "\n"


def _kib(n: int | None) -> float | None:
    return None if n is None else round(n / 1024, 1)
