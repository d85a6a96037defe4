"""PNG plots of bench records (matplotlib, Agg backend), made on the host
from the records (also those that came back from the test VM): speed per CPU
against CPUs, ns per triple against max_entries (one line per fill), and
memory against max_entries (the memory cgroup's charge, else fdinfo memlock).

Each point is the median of the record's runs; its error bar is the 95%
Student-t interval of their mean (:func:`interval`), none for a single run.
The legend sits right of the panels, never on the data.  The helpers here
(:func:`pyplot`, :func:`interval`, :func:`reach`, :func:`legend_outside`,
:func:`save`) are also the report's (:mod:`pybpfmap.report.plots`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pybpfmap.bench.record import BenchRecord, Mode
from pybpfmap.errors import EnvironmentProblem
from pybpfmap.stats import mean_ci

STYLE = {Mode.INKERNEL: "-", Mode.SYSCALL: "--"}
PALETTE = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
CONFIDENCE = 0.95
ERRORBAR = {"fmt": "none", "capsize": 3, "elinewidth": 1}
CI_NOTE = ("error bars: the 95% Student-t interval of the mean of the runs "
           "(none where a figure has a single run)")


def pyplot(param: str = "--plot") -> Any:
    """matplotlib.pyplot on the Agg backend (imported here: ``--help`` stays fast)."""
    try:
        import matplotlib
    except ImportError:
        raise EnvironmentProblem(param, "matplotlib is not installed "
                                 "(apt install python3-matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The ``confidence`` interval of the mean of ``values`` (None: fewer than 2)."""
    if len(values) < 2:
        return None
    ci = mean_ci(values, confidence)
    return (ci.low, ci.high) if ci.defined else None   # type: ignore[return-value]


def reach(value: float, ci: tuple[float, float]) -> tuple[float, float, bool]:
    """The error bar's extent below and above ``value`` (a median) for the
    interval ``ci`` (a mean's): stretched to reach ``value`` when skewed runs
    put the median outside it, and whether it was."""
    low, high = min(ci[0], value), max(ci[1], value)
    return value - low, high - value, (low, high) != tuple(ci)


def speed_interval(r: BenchRecord) -> tuple[float, float] | None:
    """The interval of the record's speed per CPU (``r.speed()``, in ``r.mode.unit``):
    in the kernel 1e9 / the interval of ns per triple (None when it reaches 0 ns),
    syscall-triggered the interval of events/s."""
    spread = r.mode.headline(r)
    if spread is None:
        return None
    ci = interval(spread.values)
    if ci is None or spread is not r.ns_per_triple:
        return ci
    return (1e9 / ci[1], 1e9 / ci[0]) if ci[0] > 0 else None


def legend_outside(ax: Any, handles: list | None = None, **kw: Any) -> Any:
    """The legend right of ``ax``, off its data (a constrained layout makes room)."""
    if handles is None:
        handles = ax.get_legend_handles_labels()[0]
    return ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                     borderaxespad=0.0, fontsize=8, **kw)


def save(fig: Any, path: str | Path) -> None:
    """Write ``fig`` as a PNG, legends outside the axes included, and free it."""
    import matplotlib.pyplot as plt

    fig.savefig(str(path), dpi=100, bbox_inches="tight")
    plt.close(fig)


def _look(r: BenchRecord, colors: dict[str, str], markers: dict[int, str]) -> dict:
    """Same colour for a map in both modes, solid in kernel, dashed syscall;
    the marker says the fill."""
    color = colors.setdefault(r.label, PALETTE[len(colors) % len(PALETTE)])
    marker = markers.setdefault(r.fill_percent, MARKERS[len(markers) % len(MARKERS)])
    return {"color": color, "linestyle": STYLE.get(r.mode, "-"), "marker": marker}


def _series(records: list[BenchRecord], x, y, err=lambda r: None
            ) -> dict[tuple, tuple[BenchRecord, list]]:
    """(label, mode, fill) -> (a record, sorted points (x, y, interval or None))."""
    out: dict[tuple, tuple[BenchRecord, list]] = {}
    for r in records:
        value = y(r)
        if value is None:
            continue
        key = (r.label, r.mode, r.fill_percent)
        out.setdefault(key, (r, []))[1].append((x(r), value, err(r)))
    return {k: (r, sorted(pts, key=lambda p: p[0])) for k, (r, pts) in out.items()}


def _draw(ax: Any, pts: list, look: dict, scale: float = 1.0) -> int:
    """A line through ``pts`` with their error bars; how many bars were drawn."""
    xs = [p[0] for p in pts]
    ax.plot(xs, [p[1] * scale for p in pts], **look)
    bars = [(p[0], p[1], reach(p[1], p[2])) for p in pts if p[2] is not None]
    if bars:
        ax.errorbar([b[0] for b in bars], [b[1] * scale for b in bars],
                    yerr=[[b[2][0] * scale for b in bars], [b[2][1] * scale for b in bars]],
                    ecolor=look["color"], **ERRORBAR)
    return len(bars)


def _ns_interval(r: BenchRecord) -> tuple[float, float] | None:
    return interval(r.ns_per_triple.values) if r.ns_per_triple else None


def plot(records: list[BenchRecord], path: str | Path) -> None:
    """Write one PNG with three panels to ``path``."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    ok = [r for r in records if r.refused is None]
    if not ok:
        raise EnvironmentProblem("--plot", "nothing was measured, nothing to plot")
    first = ok[0]
    fig, (ax_rate, ax_cost, ax_mem) = plt.subplots(1, 3, figsize=(17, 5),
                                                   layout="constrained")
    size, fill, cpus = (min(r.max_entries for r in ok), min(r.fill_percent for r in ok),
                        min(r.cpus or 1 for r in ok))
    colors: dict[str, str] = {}
    markers: dict[int, str] = {}
    bars = 0
    at = [r for r in ok if r.max_entries == size and r.fill_percent == fill]
    for _, (r, pts) in _series(at, lambda r: r.cpus, BenchRecord.speed,
                               speed_interval).items():
        bars += _draw(ax_rate, pts, _look(r, colors, markers), 1e-6)
    units = " or ".join(sorted({r.mode.unit for r in at}))
    ax_rate.set(title=f"How fast per CPU as CPUs are added?\n(max_entries={size}, fill {fill}%)",
                xlabel="CPUs", ylabel=f"million {units} per CPU")
    ax_rate.xaxis.get_major_locator().set_params(integer=True)
    one = [r for r in ok if r.cpus == cpus]
    for _, (r, pts) in _series(
            one, lambda r: r.max_entries,
            lambda r: r.ns_per_triple.median if r.ns_per_triple else None,
            _ns_interval).items():
        bars += _draw(ax_cost, pts, _look(r, colors, markers))
    ax_cost.set(title=f"What does a triple cost as the map grows?\n({cpus} CPU)",
                xscale="log", xlabel="max_entries (log scale)", ylabel="ns per triple")
    real = all(r.memory and r.memory.kernel_after is not None for r in one)

    def mem(r: BenchRecord) -> float | None:
        if r.memory is None or r.mode != first.mode:
            return None
        return r.memory.kernel_after if real else r.memory.memlock_after

    for _, (r, pts) in _series(one, lambda r: r.max_entries, mem).items():
        _draw(ax_mem, pts, {**_look(r, colors, markers), "linestyle": "-"}, 2**-20)
    what = "the map's kernel memory" if real else "fdinfo memlock"
    if not real and any(r.memory and r.memory.memlock_is_estimate for r in one):
        what += " (the kernel's estimate, < v6.4)"
    ax_mem.set(title=f"What does the map cost in memory?\n{what} after the runs, "
               "one measurement", xscale="log", yscale="log",
               xlabel="max_entries (log scale)", ylabel="MiB (log scale)")
    for ax in (ax_rate, ax_cost, ax_mem):
        ax.grid(True, alpha=0.3)
    modes = sorted({r.mode for r in ok}, key=lambda m: m.value)
    handles = [Line2D([], [], color=c, linewidth=6, label=label) for label, c in colors.items()]
    handles += [Line2D([], [], color="black", linestyle=STYLE.get(m, "-"),
                       label=f"{m} ({m.unit})") for m in modes]
    if len(markers) > 1:
        handles += [Line2D([], [], color="black", marker=mk, linestyle="none",
                           label=f"fill {f}%") for f, mk in sorted(markers.items())]
    legend_outside(ax_mem, handles, title="map (colour), mode (line)")
    m = first.machine
    where = m.where + (f", {m.accel}" if m.accel else "")
    fig.suptitle(f"pybpfmap bench, kernel {m.kernel_release} ({where}); points: median of "
                 "the runs; " + (CI_NOTE if bars else "one run each: no error bars"))
    save(fig, path)
