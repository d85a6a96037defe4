"""The human table: for each type, rows = allocation mode, columns = CPUs,
shaped like the table in kernel commit 6c9059817432 ("bpf: pre-allocate hash
map elements") (in v4.6), with the prealloc / NO_PREALLOC ratio beside the
seed's own."""

from __future__ import annotations

from itertools import groupby

from pybpfmap.maps import TYPES

# The seed's per-CPU events/s (millions), samples/bpf/map_perf_test, one
# update/lookup/delete round per event: pcpu_freelist (what preallocation
# became) and kmalloc (what BPF_F_NO_PREALLOC kept).
SEED_RATES = {1: (2.6, 1.8), 4: (2.0, 0.7), 8: (1.5, 0.4), 32: (0.49, 0.13)}
TRIGGER_GOAL = 0.70  # Python trigger's event rate as a fraction of the compiled loop's
SEED_RATIOS = {k: pre / kmalloc for k, (pre, kmalloc) in SEED_RATES.items()}

MODE_TITLE = {"inkernel": "in kernel (BPF_PROG_TEST_RUN), ns per triple net of an empty "
                          "program; M triples/s per CPU",
              "syscall": "syscall-triggered (map_perf_test style), M events/s per CPU "
                         "(ns per triple net of the trigger)"}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _cell(rec: dict) -> str:
    mark = "!" if rec.get("cv_warning") else ""
    if rec["mode"] == "inkernel":
        rate = rec["ops_per_sec_per_cpu"] or 0
        return f"{rec['ns_per_op']:.1f} ns {rate / 1e6:.2f}M{mark}"
    return f"{rec['events_per_sec'] / 1e6:.2f}M ({rec['ns_per_op']:.0f} ns){mark}"


def _rate(rec: dict) -> float:
    if rec["mode"] == "inkernel":
        return 1.0 / rec["ns_per_op"] if rec["ns_per_op"] > 0 else 0.0
    return float(rec["events_per_sec"])


def render(records: list[dict]) -> str:
    """The table for every (type, mode, max_entries) group in ``records``."""
    out: list[str] = []
    order = {t: i for i, t in enumerate(TYPES)}
    key = lambda r: (order.get(r["type"], 99), r["type"], r["mode"], r["max_entries"])  # noqa: E731
    warned = estimate = False
    for (_, type_, mode, n), group in groupby(sorted(records, key=key), key=key):
        group = list(group)
        first = group[0]
        where = f"{first['where']}" + (f", {first['accel']}" if "accel" in first else "")
        trig = f", trigger {first['trigger']}" if mode == "syscall" else ""
        out.append(f"{type_}  max_entries={n}  kernel {first['kernel']} ({where}{trig})")
        out.append(f"  {MODE_TITLE[mode]}")
        cpus = sorted({r["cpus"] for r in group if r["cpus"] is not None})
        head = f"  {'':<14}" + "".join(f"{f'{k} CPU' + ('s' if k > 1 else ''):>22}"
                                        for k in cpus) + f"{'memlock':>12}"
        out.append(head)
        rows: dict[bool, dict[int, dict]] = {}
        for prealloc in (True, False):
            recs = [r for r in group if r["prealloc"] is prealloc]
            if not recs:
                continue
            label = "prealloc" if prealloc else "no_prealloc"
            refused = [r for r in recs if "refused" in r]
            if refused:
                out.append(f"  {label:<14}refused: {refused[0]['refused']['reason']}")
                continue
            rows[prealloc] = {r["cpus"]: r for r in recs}
            cells = "".join(f"{_cell(rows[prealloc][k]) if k in rows[prealloc] else '-':>22}"
                            for k in cpus)
            mem = ("~" if recs[0].get("memlock_is_estimate") else "") + _size(recs[0]["memlock"])
            estimate |= bool(recs[0].get("memlock_is_estimate"))
            out.append(f"  {label:<14}{cells}{mem:>12}")
            warned |= any(r.get("cv_warning") for r in recs)
        if len(rows) == 2:
            ratios = []
            for k in cpus:
                a, b = rows[True].get(k), rows[False].get(k)
                ratios.append(f"{_rate(a) / _rate(b):.2f}x" if a and b and _rate(b) else "-")
            out.append(f"  {'pre/no ratio':<14}" + "".join(f"{x:>22}" for x in ratios))
            out.append(f"  {'seed ratio':<14}" + "".join(
                f"{f'{SEED_RATIOS[k]:.2f}x' if k in SEED_RATIOS else '-':>22}" for k in cpus))
        if mode == "syscall" and (one := next((r for r in group if r["cpus"] == 1
                                               and "trigger_ratio" in r), None)):
            if one["trigger_ratio"] is None:
                out.append(f"  Python trigger vs compiled loop: unavailable "
                           f"({one['trigger_ratio_unavailable']})")
            else:
                low = one["trigger_ratio"] < TRIGGER_GOAL
                out.append(f"  Python trigger vs compiled loop (1 CPU): "
                           f"{one['trigger_ratio']:.0%} of its event rate with the triple, "
                           f"{one['trigger_ratio_empty']:.0%} with the empty program"
                           + (f"  (below {TRIGGER_GOAL:.0%}: the Python loop hides part "
                              "of the map cost)" if low else ""))
        out.append("")
    seed = ", ".join(f"{SEED_RATIOS[k]:.2f}x at {k}" for k in sorted(SEED_RATIOS))
    out.append(f"seed ratios (6c9059817432, pcpu_freelist / kmalloc, CPUs): {seed}")
    out.append("  (since Linux kernel commit fba1a1c6c912 (\"bpf: Convert hash map to "
               "bpf_mem_alloc.\") (in v6.1) NO_PREALLOC no longer means kmalloc)")
    out.append("memlock: fdinfo memlock after the runs; every triple deletes what it "
               "inserted, so a NO_PREALLOC map is then empty")
    if estimate:
        out.append("~ = the kernel's fdinfo memlock is its old estimate (round_up(key + value, "
                   "8) * max_entries), not usage: real figures since Linux kernel commit "
                   "304849a27b34 (\"bpf: hashtab memory usage\") (in v6.4)")
    if warned:
        out.append("! = runs disagree: coefficient of variation above 5% (see --json cv)")
    return "\n".join(out)
