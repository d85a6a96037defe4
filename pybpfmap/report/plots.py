"""The report's plots, one per question, from records of several kernels.

Each function takes the records (already loaded, kernels mixed) and a path,
writes a PNG (matplotlib on the Agg backend, imported when called) and
returns its caption — what is plotted, from which command, how the error
bars were computed — or None when no record has anything to plot.  A kernel
is a colour; its name is its release, with where it ran (and the CPU) added
only when two places share a release.  Legends sit right of the axes, never
on the data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pybpfmap import commits
from pybpfmap.bench.plot import (
    CONFIDENCE,
    ERRORBAR,
    PALETTE,
    legend_outside,
    pyplot,
    reach,
    save,
    speed_interval,
)
from pybpfmap.bench.record import BenchRecord, Mode, pre_no_ratio
from pybpfmap.bench.table import SEED_RATIOS
from pybpfmap.footprint import MapRecord
from pybpfmap.stress.records import StressRun

PARAM = "report plots"
MODE_STYLE = {True: "-", False: "--"}          # prealloc solid, NO_PREALLOC dashed
MODE_NAME = {True: "prealloc", False: "NO_PREALLOC"}
STAGE_MARKER = {"empty": "o", "full": "^", "after": "s"}
STAGE_NAME = {"empty": "empty", "full": "full", "after": "after the bench runs"}
LATENCY_MARKER = {"p50": "o", "p99": "s", "max": "^"}
CONTEXT = {"nmi_tracepoint": "NMI", "raw_tp": "syscall entry", "xdp": "softirq (XDP)",
           "syscall": "user space bpf(2)", "kprobe": "kprobe", "tracepoint": "tracepoint"}
PCT = round(CONFIDENCE * 100)


def _names(keys: list[tuple]) -> dict[tuple, str]:
    """Each kernel key (release, where, ...) by its release, the next fields
    added in parentheses only while two keys would share a name."""
    keys = list(dict.fromkeys(keys))
    width = max((len(k) for k in keys), default=1)
    for n in range(1, width + 1):
        names = {k: k[0] + (f" ({', '.join(str(p) for p in k[1:n] if p)})"
                            if n > 1 and any(k[1:n]) else "") for k in keys}
        if len(set(names.values())) == len(keys):
            return names
    return {k: f"{names[k]} #{i + 1}" for i, k in enumerate(keys)}


def _colors(names: dict[tuple, str]) -> dict[tuple, str]:
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(names)}


def _kernel_handles(names: dict[tuple, str], colors: dict[tuple, str]) -> list:
    from matplotlib.patches import Patch

    return [Patch(color=colors[k], label=f"kernel {n}") for k, n in names.items()]


def _bench_key(r: BenchRecord) -> tuple:
    m = r.machine
    return (m.kernel_release, m.where, m.cpu_model)


# --- 1. prealloc ÷ NO_PREALLOC speed ----------------------------------------------


@dataclass(frozen=True)
class Ratio:
    """prealloc ÷ NO_PREALLOC speed of one map type on one kernel."""

    value: float                              # the ratio of the medians (the table's)
    interval: tuple[float, float] | None      # None: see ``single``
    single: bool = False                      # a side has one run (else: its interval
                                              # reaches 0, the ratio's is unbounded)


def ratio_of(records: list[BenchRecord], *, mode: Mode, type: str, cpus: int,
             max_entries: int, fill_percent: int) -> Ratio | None:
    """The ratio of one kernel's records, as :func:`pre_no_ratio` computes it,
    with its interval: each side's speed interval (95% Student-t of the mean
    of its runs), the low end over the other side's high end and the high end
    over the other's low end — the widest ratio the two intervals allow."""
    value = pre_no_ratio(records, mode=mode, type=type, cpus=cpus, max_entries=max_entries,
                         fill_percent=fill_percent)
    if value is None:
        return None
    pre, no = (next(r for r in records if (r.mode, r.type, r.prealloc, r.cpus, r.max_entries,
                                           r.fill_percent)
                    == (mode, type, p, cpus, max_entries, fill_percent)) for p in (True, False))
    single = any(s is None or len(s.values) < 2
                 for s in (pre.mode.headline(pre), no.mode.headline(no)))
    a, b = speed_interval(pre), speed_interval(no)
    if single or a is None or b is None or b[0] <= 0:
        return Ratio(value, None, single)
    return Ratio(value, (a[0] / b[1], a[1] / b[0]))


def _speed_ratio_figure(bench_records: list[BenchRecord]) -> tuple[Any, str] | None:
    one = [r for r in bench_records if r.cpus == 1 and r.refused is None]
    mode = Mode.INKERNEL if any(r.mode is Mode.INKERNEL for r in one) else Mode.SYSCALL
    one = [r for r in one if r.mode is mode]
    if not one:
        return None
    sizes = Counter(r.max_entries for r in one)
    size = max(sizes, key=lambda n: (sizes[n], -n))
    fill = min(r.fill_percent for r in one if r.max_entries == size)
    by: dict[tuple, list[BenchRecord]] = {}
    for r in one:
        by.setdefault(_bench_key(r), []).append(r)
    types = list(dict.fromkeys(r.type for r in one))
    ratios = {(k, t): q for k, rs in by.items() for t in types
              if (q := ratio_of(rs, mode=mode, type=t, cpus=1, max_entries=size,
                                fill_percent=fill))}
    if not ratios:
        return None
    types = [t for t in types if any(t == tt for _, tt in ratios)]
    kernels = [k for k in by if any(k == kk for kk, _ in ratios)]
    names = _names(kernels)
    colors = _colors(names)

    plt = pyplot(PARAM)
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(max(6.4, 1.2 + 0.55 * len(types) * len(kernels)), 4.8),
                           layout="constrained")
    width = 0.8 / len(kernels)
    bars = stretched = single = unbounded = 0
    for i, k in enumerate(kernels):
        for j, t in enumerate(types):
            q = ratios.get((k, t))
            if q is None:
                continue
            x = j - 0.4 + width * (i + 0.5)
            ax.bar(x, q.value, width * 0.9, color=colors[k])
            top = q.value
            if q.interval is None:
                single, unbounded = single + q.single, unbounded + (not q.single)
            else:
                below, above, s = reach(q.value, q.interval)
                ax.errorbar([x], [q.value], yerr=[[below], [above]], ecolor="black",
                            **ERRORBAR)
                bars, stretched, top = bars + 1, stretched + s, q.value + above
            ax.annotate(f"{q.value:.2f}x", (x, top), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    handles = _kernel_handles(names, colors)
    handles.append(Line2D([], [], color="black", linewidth=0.8,
                          label="1.0: both modes equally fast"))
    seed = SEED_RATIOS.get(1)
    if seed is not None:
        ax.axhline(seed, color="grey", linestyle=":", linewidth=1.5)
        handles.append(Line2D([], [], color="grey", linestyle=":", linewidth=1.5,
                              label=f"seed {seed:.2f}x (hash, 1 CPU,\n"
                                    f"{commits.PREALLOC.commit}, "
                                    f"v{commits.PREALLOC.version[0]}."
                                    f"{commits.PREALLOC.version[1]})"))
    if bars:
        handles.append(Line2D([], [], color="black", marker="|", markersize=10,
                              linestyle="none", label=f"{PCT}% interval"))
    legend_outside(ax, handles)
    ax.set_xticks(range(len(types)), types)
    ax.set_xlim(-0.6, len(types) - 0.4)
    ax.set_ylim(bottom=0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set(xlabel="map type",
           ylabel="prealloc ÷ NO_PREALLOC speed (×)\n(> 1: prealloc faster)",
           title=f"Is a preallocated map faster than BPF_F_NO_PREALLOC?\n"
                 f"{mode} mode, 1 CPU, max_entries={size}"
                 + (f", fill {fill}%" if fill else ""))
    how = (f"bars: the ratio of the two sides' medians; error bars: each side's {PCT}% "
           "Student-t interval of the mean over its runs, combined as the ratio of opposite "
           "ends (prealloc low ÷ NO_PREALLOC high to prealloc high ÷ NO_PREALLOC low: "
           "conservative)")
    if stretched:
        how += f", {stretched} stretched to reach the ratio of medians (skewed runs)"
    if not bars:
        how = "bars: the ratio of the two sides' medians; no error bars"
    if single:
        how += (": every figure is a single run" if single == len(ratios) else
                f"; {single} bars without one (a side with a single run)")
    if unbounded:
        how += f"; {unbounded} bars without one (a side's interval reaches 0)"
    caption = (f"prealloc ÷ BPF_F_NO_PREALLOC speed per CPU ({mode.unit}) of each map type "
               f"and kernel, from `pybpfmap bench` ({mode} mode, 1 CPU, max_entries={size}), "
               f"as the across-kernels table computes it: {how}. The dotted line is the "
               f"seed's hash map ratio ({commits.PREALLOC.cite()}); missing bars: refused, "
               "failed its checks or not measured.")
    return fig, caption


def speed_ratio(bench_records: list[BenchRecord], path: str | Path) -> str | None:
    """prealloc ÷ NO_PREALLOC speed per map type (x) and kernel (bars), 1 CPU."""
    made = _speed_ratio_figure(bench_records)
    if made is None:
        return None
    save(made[0], path)
    return made[1]


# --- 2. memory per allocation mode ----------------------------------------------------


def _map_points(records: list[MapRecord], type: str) -> dict[tuple, list]:
    """(kernel, prealloc, stage) -> [(max_entries, bytes)] from ``pybpfmap maps``."""
    out: dict[tuple, list] = {}
    for r in records:
        if r.skipped or r.type != type:
            continue
        for stage in ("empty", "full"):
            m = r.memory.get(stage)
            if m is not None and m.kernel is not None:
                out.setdefault(((r.kernel_release, r.where), r.prealloc, stage), []).append(
                    (r.max_entries, m.kernel))
    return out


def _bench_points(records: list[BenchRecord], type: str) -> dict[tuple, list]:
    """The same from ``pybpfmap bench`` (memory when created and after the runs),
    one record per max_entries: the fewest CPUs and lowest fill, in kernel first."""
    chosen: dict[tuple, BenchRecord] = {}
    for r in sorted(records, key=lambda r: (r.cpus or 0, r.fill_percent,
                                            r.mode is not Mode.INKERNEL)):
        if r.type == type and r.refused is None and r.memory is not None:
            chosen.setdefault((r.machine.kernel_release, r.machine.where, r.prealloc,
                               r.max_entries), r)
    out: dict[tuple, list] = {}
    for (release, where, prealloc, n), r in chosen.items():
        for stage, v in (("empty", r.memory.kernel_empty), ("after", r.memory.kernel_after)):
            if v is not None:
                out.setdefault(((release, where), prealloc, stage), []).append((n, v))
    return out


def _sizes(points: dict[tuple, list], kernel: tuple) -> int:
    return len({n for (k, _, _), pts in points.items() if k == kernel for n, _ in pts})


def _memory_figure(map_records: list[MapRecord], bench_records: list[BenchRecord]
                   ) -> tuple[Any, str] | None:
    types = Counter([r.type for r in map_records if not r.skipped]
                    + [r.type for r in bench_records if r.memory is not None])
    if not types:
        return None
    type = "hash" if "hash" in types else types.most_common(1)[0][0]
    maps, bench = _map_points(map_records, type), _bench_points(bench_records, type)
    kernels = list(dict.fromkeys([k for k, _, _ in maps] + [k for k, _, _ in bench]))
    source: dict[tuple, str] = {}
    points: dict[tuple, list] = {}
    for k in kernels:   # one source per kernel: the one with more max_entries, maps on a tie
        use, name = ((maps, "maps") if _sizes(maps, k) >= _sizes(bench, k)
                     else (bench, "bench"))
        source[k] = name
        points.update({key: pts for key, pts in use.items() if key[0] == k})
    dropped = sum(1 for pts in points.values() for _, v in pts if v <= 0)
    points = {key: sorted((n, v) for n, v in pts if v > 0) for key, pts in points.items()}
    points = {key: pts for key, pts in points.items() if pts}
    if not points:
        return None
    kernels = [k for k in kernels if any(key[0] == k for key in points)]
    names = _names(kernels)
    colors = _colors(names)

    plt = pyplot(PARAM)
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    for (k, prealloc, stage), pts in points.items():
        ax.plot([n for n, _ in pts], [v / 2**20 for _, v in pts], color=colors[k],
                linestyle=MODE_STYLE[prealloc], marker=STAGE_MARKER[stage])
    stages = [s for s in STAGE_MARKER if any(key[2] == s for key in points)]
    modes = [p for p in MODE_STYLE if any(key[1] is p for key in points)]
    handles = _kernel_handles(names, colors)
    handles += [Line2D([], [], color="black", linestyle=MODE_STYLE[p], label=MODE_NAME[p])
                for p in modes]
    handles += [Line2D([], [], color="black", marker=STAGE_MARKER[s], linestyle="none",
                       label=STAGE_NAME[s]) for s in stages]
    legend_outside(ax, handles)
    ax.grid(True, which="both", alpha=0.3)
    ax.set(xscale="log", yscale="log", xlabel="max_entries (log scale)",
           ylabel="the map's kernel memory (MiB, log scale)",
           title=f"What does each allocation mode cost in kernel memory?\n{type} map, "
                 "empty and filled")
    methods = sorted({r.method for r in map_records if not r.skipped and r.type == type
                      and source.get((r.kernel_release, r.where)) == "maps"}
                     | {r.memory.method for r in bench_records if r.memory is not None
                        and r.type == type
                        and source.get((r.machine.kernel_release, r.machine.where)) == "bench"})
    froms = ", ".join(f"{names[k]}: `pybpfmap {source[k]}`" for k in kernels)
    caption = (f"The {type} map's kernel memory per allocation mode (solid: prealloc, dashed: "
               "BPF_F_NO_PREALLOC) against max_entries, empty and filled (`maps`: filled to "
               "max_entries; `bench`: after its runs), one colour per kernel, from "
               f"{froms}; read by {'; '.join(m for m in methods if m) or 'an unrecorded method'}. "
               "No error bars: each point is a single measurement."
               + (f" {dropped} zero readings are not shown on the log axis." if dropped else ""))
    return fig, caption


def memory_per_mode(map_records: list[MapRecord], bench_records: list[BenchRecord],
                    path: str | Path) -> str | None:
    """Kernel memory per allocation mode against max_entries, empty and filled."""
    made = _memory_figure(map_records, bench_records)
    if made is None:
        return None
    save(made[0], path)
    return made[1]


# --- 3. update latency ----------------------------------------------------------------


def _latency_figure(stress_runs: list[StressRun]) -> tuple[Any, str] | None:
    series: dict[tuple, dict[tuple, Any]] = {}   # kernel -> (scenario, kind, context) -> Latency
    scenarios: dict[str, None] = {}
    for run in stress_runs:
        kernel = (run.kernel_release, run.where)
        for row in run.rows:
            for p in row.per_probe:
                lat = p.latency
                if lat is None or not lat.count or not any(
                        v and v > 0 for v in (lat.p50_ns, lat.p99_ns, lat.max_ns)):
                    continue
                scenarios[row.scenario] = None
                group = (row.scenario, row.kind, CONTEXT.get(p.kind, p.kind))
                have = series.setdefault(kernel, {}).get(group)
                if have is None or (lat.max_ns or 0) > (have.max_ns or 0):
                    series[kernel][group] = lat
    if not series:
        return None
    groups = list(dict.fromkeys(g for s in series.values() for g in s))
    names = _names(list(series))
    colors = _colors(names)

    plt = pyplot(PARAM)
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(max(6.4, 1.5 + 0.9 * len(groups)), 5.2),
                           layout="constrained")
    width = 0.8 / len(series)
    bucketed = exact = 0
    for i, (k, lats) in enumerate(series.items()):
        for j, g in enumerate(groups):
            lat = lats.get(g)
            if lat is None:
                continue
            x = j - 0.4 + width * (i + 0.5)
            figs = {"p50": lat.p50_ns, "p99": lat.p99_ns, "max": lat.max_ns}
            shown = {q: v for q, v in figs.items() if v and v > 0}   # a log axis
            ax.vlines(x, min(shown.values()), max(shown.values()), color=colors[k],
                      linewidth=2)
            for q, v in shown.items():
                ax.plot([x], [v], marker=LATENCY_MARKER[q], color=colors[k],
                        linestyle="none", markersize=6)
            exact, bucketed = exact + lat.exact, bucketed + (not lat.exact)
    handles = _kernel_handles(names, colors)
    handles += [Line2D([], [], color="black", marker=LATENCY_MARKER[q], linestyle="none",
                       label=label) for q, label in (("max", "worst (max)"), ("p99", "p99"),
                                                    ("p50", "median (p50)"))]
    legend_outside(ax, handles)
    ax.set_xticks(range(len(groups)), ["\n".join(g) for g in groups], fontsize=7)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_yscale("log")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.set(xlabel="scenario, map kind, context of the update",
           ylabel="update latency (ns, log scale)",
           title="How long can one map update take under contention?\n"
                 "worst, p99 and median per map kind and kernel")
    how = []
    if bucketed:
        how.append("percentiles a BPF program timed are the upper bounds of their log2 "
                   "buckets (at most), its worst exact")
    if exact:
        how.append("user space's are exact over its samples")
    caption = (f"Update latency per map kind, context and kernel, from `pybpfmap stress` "
               f"(scenarios {', '.join(scenarios)}): worst, p99 and median of the updates "
               f"timed in each row; {'; '.join(how)}. No error bars: one stress run per "
               "kernel, its percentiles over every update it timed.")
    return fig, caption


def update_latency(stress_runs: list[StressRun], path: str | Path) -> str | None:
    """Worst, p99 and median update latency of the stress rows that timed them."""
    made = _latency_figure(stress_runs)
    if made is None:
        return None
    save(made[0], path)
    return made[1]
