"""PNG plots of bench records (matplotlib, Agg backend): rate against CPUs,
and cost and memory against max_entries."""

from __future__ import annotations

from pathlib import Path

from pybpfmap.errors import EnvironmentProblem

STYLE = {"inkernel": "-", "syscall": "--"}


def _label(r: dict) -> str:
    return f"{r['type']} {'prealloc' if r['prealloc'] else 'no_prealloc'} {r['mode']}"


def _look(label: str, colors: dict[str, str]) -> dict:
    """Same colour for a map in both modes; solid in kernel, dashed syscall."""
    what, mode = label.rsplit(" ", 1)
    palette = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7"]
    color = colors.setdefault(what, palette[len(colors) % len(palette)])
    return {"color": color, "linestyle": STYLE.get(mode, "-"), "marker": "o"}


def _series(records: list[dict], x: str, y: str, **fixed) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for r in records:
        if "refused" in r or r.get(y) is None or any(r[k] != v for k, v in fixed.items()):
            continue
        out.setdefault(_label(r), []).append((r[x], r[y]))
    return {k: sorted(v) for k, v in out.items()}


def plot(records: list[dict], path: str | Path) -> None:
    """Write one PNG with three panels to ``path``."""
    try:
        import matplotlib
    except ImportError:
        raise EnvironmentProblem("--plot", "matplotlib is not installed "
                                 "(apt install python3-matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if "refused" not in r]
    if not ok:
        raise EnvironmentProblem("--plot", "nothing was measured, nothing to plot")
    first = ok[0]
    fig, (ax_rate, ax_cost, ax_mem) = plt.subplots(1, 3, figsize=(16, 5))
    size = min(r["max_entries"] for r in ok)
    colors: dict[str, str] = {}
    for mode, key, unit in (("inkernel", "ops_per_sec_total", "triples/s"),
                            ("syscall", "events_per_sec_total", "events/s")):
        for label, pts in _series(ok, "cpus", key, mode=mode, max_entries=size).items():
            ax_rate.plot(*zip(*pts, strict=True), **_look(label, colors),
                         label=f"{label} ({unit})")
    ax_rate.set(title=f"rate against CPUs (max_entries={size})", xlabel="CPUs",
                ylabel="total per second")
    ax_rate.xaxis.get_major_locator().set_params(integer=True)
    cpus = min(r["cpus"] for r in ok)
    for label, pts in _series(ok, "max_entries", "ns_per_op", cpus=cpus).items():
        ax_cost.plot(*zip(*pts, strict=True), **_look(label, colors), label=label)
    ax_cost.set(title=f"ns per triple against max_entries ({cpus} CPU)", xscale="log",
                xlabel="max_entries", ylabel="ns per triple")
    mem = _series([r for r in ok if r["mode"] == ok[0]["mode"]], "max_entries", "memlock",
                  cpus=cpus)
    for label, pts in mem.items():
        ax_mem.plot(*zip(*pts, strict=True), **{**_look(label, colors), "linestyle": "-"},
                    label=label.rsplit(" ", 1)[0])
    est = " (kernel's old estimate, < v6.4)" if any(r.get("memlock_is_estimate")
                                                    for r in ok) else ""
    ax_mem.set(title=f"memory charged (fdinfo memlock){est}", xscale="log", yscale="log",
               xlabel="max_entries", ylabel="bytes")
    for ax in (ax_rate, ax_cost, ax_mem):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    where = first["where"] + (f", {first['accel']}" if "accel" in first else "")
    fig.suptitle(f"pybpfmap bench, kernel {first['kernel']} ({where})")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
