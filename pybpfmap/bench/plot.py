"""PNG plots of bench records (matplotlib, Agg backend), made on the host
from the records (also those that came back from the test VM): speed per CPU
against CPUs, ns per triple against max_entries (one line per fill), and
memory against max_entries (the memory cgroup's charge, else fdinfo memlock)."""

from __future__ import annotations

from pathlib import Path

from pybpfmap.bench.record import BenchRecord, Mode
from pybpfmap.errors import EnvironmentProblem

STYLE = {Mode.INKERNEL: "-", Mode.SYSCALL: "--"}
PALETTE = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7"]


def _look(r: BenchRecord, colors: dict[str, str]) -> dict:
    """Same colour for a map in both modes; solid in kernel, dashed syscall."""
    color = colors.setdefault(r.label, PALETTE[len(colors) % len(PALETTE)])
    return {"color": color, "linestyle": STYLE.get(r.mode, "-"), "marker": "o"}


def _series(records: list[BenchRecord], x, y) -> dict[tuple, tuple[BenchRecord, list]]:
    out: dict[tuple, tuple[BenchRecord, list]] = {}
    for r in records:
        value = y(r)
        if value is None:
            continue
        key = (r.label, r.mode, r.fill_percent)
        out.setdefault(key, (r, []))[1].append((x(r), value))
    return {k: (r, sorted(pts)) for k, (r, pts) in out.items()}


def plot(records: list[BenchRecord], path: str | Path) -> None:
    """Write one PNG with three panels to ``path``."""
    try:
        import matplotlib
    except ImportError:
        raise EnvironmentProblem("--plot", "matplotlib is not installed "
                                 "(apt install python3-matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.refused is None]
    if not ok:
        raise EnvironmentProblem("--plot", "nothing was measured, nothing to plot")
    first = ok[0]
    fig, (ax_rate, ax_cost, ax_mem) = plt.subplots(1, 3, figsize=(16, 5))
    size, fill, cpus = (min(r.max_entries for r in ok), min(r.fill_percent for r in ok),
                        min(r.cpus or 1 for r in ok))
    colors: dict[str, str] = {}
    at = [r for r in ok if r.max_entries == size and r.fill_percent == fill]
    for (label, mode, _), (r, pts) in _series(at, lambda r: r.cpus, BenchRecord.speed).items():
        ax_rate.plot(*zip(*pts, strict=True), **_look(r, colors),
                     label=f"{label} {mode} ({mode.unit})")
    ax_rate.set(title=f"speed per CPU (max_entries={size}, fill {fill}%)", xlabel="CPUs",
                ylabel="per second per CPU")
    ax_rate.xaxis.get_major_locator().set_params(integer=True)
    one = [r for r in ok if r.cpus == cpus]
    for (label, mode, f), (r, pts) in _series(
            one, lambda r: r.max_entries,
            lambda r: r.ns_per_triple.median if r.ns_per_triple else None).items():
        ax_cost.plot(*zip(*pts, strict=True), **_look(r, colors),
                     label=f"{label} {mode}" + (f" fill {f}%" if f else ""))
    ax_cost.set(title=f"ns per triple against max_entries ({cpus} CPU)", xscale="log",
                xlabel="max_entries", ylabel="ns per triple")
    memcg = all(r.memory and r.memory.memcg_after is not None for r in one)

    def mem(r: BenchRecord) -> float | None:
        if r.memory is None or r.mode != first.mode:
            return None
        return r.memory.memcg_after if memcg else r.memory.memlock_after

    for (label, _, f), (r, pts) in _series(one, lambda r: r.max_entries, mem).items():
        ax_mem.plot(*zip(*pts, strict=True), **{**_look(r, colors), "linestyle": "-"},
                    label=label + (f" fill {f}%" if f else ""))
    what = "memory cgroup charge" if memcg else "fdinfo memlock"
    if not memcg and any(r.memory and r.memory.memlock_is_estimate for r in one):
        what += " (the kernel's estimate, < v6.4)"
    ax_mem.set(title=f"memory after the runs: {what}", xscale="log", yscale="log",
               xlabel="max_entries", ylabel="bytes")
    for ax in (ax_rate, ax_cost, ax_mem):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    m = first.machine
    where = m.where + (f", {m.accel}" if m.accel else "")
    fig.suptitle(f"pybpfmap bench, kernel {m.kernel_release} ({where})")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
