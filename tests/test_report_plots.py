"""The report's plots (pybpfmap.report.plots) and the bench's --plot: what they
draw from small synthetic records, where their legends sit, their error bars."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from pybpfmap.bench import plot as bench_plot  # noqa: E402
from pybpfmap.bench.machine import Machine  # noqa: E402
from pybpfmap.bench.record import BenchRecord, Memory, Mode, Refusal, Spread  # noqa: E402
from pybpfmap.footprint import MapRecord  # noqa: E402
from pybpfmap.footprint import Memory as MapMemory  # noqa: E402
from pybpfmap.report import plots  # noqa: E402
from pybpfmap.stats import mean_ci  # noqa: E402
from pybpfmap.stress.latency import Latency  # noqa: E402
from pybpfmap.stress.records import ProbeStats, StressRow, StressRun  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
OLD, NEW = "5.10.0-30-amd64", "6.1.0-50-amd64"


def machine(release: str, where: str = "host") -> Machine:
    return Machine(release, where, None, "none", 2, 2, 1, False, True)


def bench(release: str, prealloc: bool, ns: list[float], *, type: str = "hash",
          mode: Mode = Mode.INKERNEL, cpus: int = 1, max_entries: int = 1000,
          where: str = "host") -> BenchRecord:
    """A record measured ``ns`` per triple in each run."""
    spread = Spread.of(ns, 4)
    speed = 1e9 / spread.median
    r = BenchRecord(mode, type, prealloc, max_entries, cpus, machine(release, where),
                    runs=len(ns), ns_per_triple=spread,
                    memory=Memory(4096, 4096, 4096, False, 1000 * max_entries,
                                  1000 * max_entries, 1100 * max_entries,
                                  method="memory cgroup v2"))
    if mode is Mode.INKERNEL:
        r.triples_per_sec_per_cpu = speed
    else:
        r.events_per_sec = Spread.of([1e9 / v for v in ns], 2)
    return r


def pair(release: str, pre: list[float], no: list[float], **kw) -> list[BenchRecord]:
    return [bench(release, True, pre, **kw), bench(release, False, no, **kw)]


def map_record(release: str, prealloc: bool, n: int, *, skipped: str | None = None) -> MapRecord:
    full = 100 * n
    empty = full if prealloc else 5000
    return MapRecord("hash", prealloc, n, 4, 8, release, "host", skipped=skipped,
                     memory={"empty": MapMemory(0, empty), "full": MapMemory(0, full)},
                     method="memory cgroup v2")


def stress_run(release: str, latencies: list[Latency | None]) -> StressRun:
    rows = [StressRow("nmi", f"hash/prealloc/{i}", "hash", True, 8, "tracepoint",
                      "nmi:nmi_handler", outcome="PASS",
                      per_probe=[ProbeStats("nmi:nmi_handler", "nmi_tracepoint", 10,
                                            latency=lat)])
            for i, lat in enumerate(latencies)]
    return StressRun(release, "host", "modern", 5.0, False, [], rows)


BUCKETED = Latency.from_log2([0] * 9 + [50, 40, 9, 1], 5000)   # 512 ns .. 5 us


@pytest.fixture
def figures(monkeypatch):
    """The figures the functions draw, kept open for inspection (save() still writes)."""
    import matplotlib.pyplot as plt

    kept: list = []

    def keep(fig, path):
        kept.append(fig)
        fig.savefig(str(path), dpi=50, bbox_inches="tight")

    monkeypatch.setattr(plots, "save", keep)
    monkeypatch.setattr(bench_plot, "save", keep)
    yield kept
    for fig in kept:
        plt.close(fig)


def errorbar_spans(ax) -> list[tuple[float, float, float]]:
    """(x, low, high) of every error bar drawn on ``ax``."""
    from matplotlib.container import ErrorbarContainer

    out = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            for seg in c.lines[2][0].get_segments():
                (x0, y0), (_, y1) = seg
                out.append((x0, min(y0, y1), max(y0, y1)))
    return out


def bar_heights(ax) -> dict[float, float]:
    return {round(p.get_x() + p.get_width() / 2, 6): p.get_height() for p in ax.patches}


def assert_legend_outside(fig) -> None:
    """Every legend lies off every axes, and inside the saved picture."""
    fig.canvas.draw()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends
    renderer = fig.canvas.get_renderer()
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            area = ax.get_window_extent(renderer)
            assert box.x0 >= area.x1 or box.x1 <= area.x0 or box.y0 >= area.y1 \
                or box.y1 <= area.y0, (box, area)
        assert box.x1 <= fig.bbox.x1 + 1 and box.y1 <= fig.bbox.y1 + 1


def test_each_plot_writes_a_png_and_says_what_it_shows(tmp_path: Path, figures) -> None:
    records = pair(OLD, [50, 52, 51, 49], [70, 75, 72, 71]) + pair(NEW, [40, 41, 40], [45, 44, 46])
    maps = [map_record(r, p, n) for r in (OLD, NEW) for p in (True, False) for n in (100, 10000)]
    runs = [stress_run(OLD, [BUCKETED]),
            stress_run(NEW, [Latency.from_samples([900, 1200, 40000])])]
    made = {"ratio.png": plots.speed_ratio(records, tmp_path / "ratio.png"),
            "memory.png": plots.memory_per_mode(maps, records, tmp_path / "memory.png"),
            "latency.png": plots.update_latency(runs, tmp_path / "latency.png")}
    for name, caption in made.items():
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG and len(data) > 1000, name
        assert caption and "`pybpfmap " in caption, name
    assert "95%" in made["ratio.png"] and "opposite ends" in made["ratio.png"]
    assert "No error bars" in made["memory.png"] and "single measurement" in made["memory.png"]
    assert "log2" in made["latency.png"] and "exact" in made["latency.png"]
    for fig in figures:
        assert_legend_outside(fig)
        assert fig.axes[0].get_title() and "?" in fig.axes[0].get_title()
        assert fig.axes[0].get_ylabel() and "(" in fig.axes[0].get_ylabel()


def test_ratio_error_bar_is_the_opposite_ends_and_covers_the_ratio(tmp_path, figures) -> None:
    pre, no = [50, 52, 51, 49], [70, 75, 72, 71]
    caption = plots.speed_ratio(pair(OLD, pre, no), tmp_path / "r.png")
    ax = figures[0].axes[0]
    ((x, low, high),) = errorbar_spans(ax)
    ratio = statistics.median(no) / statistics.median(pre)   # speed is 1 / ns
    assert bar_heights(ax)[round(x, 6)] == pytest.approx(ratio)
    assert low <= ratio <= high
    a, b = mean_ci(pre), mean_ci(no)      # ns: prealloc fastest at its low end
    assert low == pytest.approx(b.low / a.high) and high == pytest.approx(b.high / a.low)
    assert "stretched" not in caption


def test_skewed_runs_stretch_the_bar_to_the_ratio_and_say_so(tmp_path, figures) -> None:
    skewed = [10.0] * 6 + [20.0] * 5       # median 10, the mean's interval above it
    ci = mean_ci(skewed)
    assert ci.low > statistics.median(skewed)
    caption = plots.speed_ratio(pair(OLD, skewed, [12.0, 12.1, 11.9]), tmp_path / "r.png")
    ((_, low, high),) = errorbar_spans(figures[0].axes[0])
    assert low <= 12.0 / 10.0 <= high
    assert "stretched" in caption


def test_one_run_draws_no_error_bar_and_the_caption_says_so(tmp_path, figures) -> None:
    records = pair(OLD, [50.0], [70.0]) + pair(NEW, [40.0], [45.0])
    caption = plots.speed_ratio(records, tmp_path / "r.png")
    ax = figures[0].axes[0]
    assert errorbar_spans(ax) == []
    assert sorted(bar_heights(ax).values()) == pytest.approx([45 / 40, 70 / 50])
    assert "no error bars" in caption and "single run" in caption
    # one side with runs, the other a single run: no bar for that ratio alone
    mixed = pair(OLD, [50, 51, 52], [70, 71, 72]) + pair(NEW, [40.0], [45.0])
    caption = plots.speed_ratio(mixed, tmp_path / "m.png")
    assert len(errorbar_spans(figures[1].axes[0])) == 1
    assert "1 bars without one (a side with a single run)" in caption


def test_ratio_uses_one_size_at_one_cpu_and_inkernel_first(tmp_path, figures) -> None:
    records = (pair(OLD, [50, 51], [70, 71]) + pair(OLD, [60, 61], [90, 91], max_entries=10)
               + pair(OLD, [50, 51], [70, 71], type="percpu_hash")
               + pair(OLD, [5, 5], [50, 50], cpus=2)
               + pair(OLD, [5, 5], [50, 50], mode=Mode.SYSCALL))
    caption = plots.speed_ratio(records, tmp_path / "r.png")
    ax = figures[0].axes[0]
    assert "max_entries=1000" in caption and "inkernel" in caption
    assert [t.get_text() for t in ax.get_xticklabels()] == ["hash", "percpu_hash"]
    assert sorted(bar_heights(ax).values()) == pytest.approx([70.5 / 50.5] * 2)
    # syscall alone: the events/s ratio
    caption = plots.speed_ratio(pair(NEW, [10, 10.5], [20, 21], mode=Mode.SYSCALL),
                                tmp_path / "s.png")
    assert "syscall" in caption and "events/s" in caption


def test_two_places_with_one_release_are_told_apart(tmp_path, figures) -> None:
    records = pair(NEW, [40, 41], [45, 46]) + pair(NEW, [40, 41], [45, 46], where="vm:bookworm")
    plots.speed_ratio(records, tmp_path / "r.png")
    texts = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert f"kernel {NEW} (host)" in texts and f"kernel {NEW} (vm:bookworm)" in texts


def test_memory_lines_per_mode_and_kernel_from_either_command(tmp_path, figures) -> None:
    maps = [map_record(OLD, p, n) for p in (True, False) for n in (100, 1000, 10000)]
    records = [bench(NEW, p, [40, 41], max_entries=n) for p in (True, False) for n in (100, 1000)]
    caption = plots.memory_per_mode(maps, records, tmp_path / "m.png")
    ax = figures[0].axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    styles = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in ax.lines}
    assert len(styles) == len(ax.lines) == 8         # 2 kernels x 2 modes x 2 stages
    assert {s[1] for s in styles} == {"-", "--"}
    assert f"{OLD}: `pybpfmap maps`" in caption and f"{NEW}: `pybpfmap bench`" in caption
    assert "after its runs" in caption
    # a full prealloc map of 10000 entries: 100 bytes an entry, in MiB
    full = [line for line in ax.lines if line.get_marker() == "^" and line.get_linestyle() == "-"]
    assert max(full[0].get_ydata()) == pytest.approx(100 * 10000 / 2**20)


def test_latency_shows_worst_p99_median_on_a_log_axis(tmp_path, figures) -> None:
    exact = Latency.from_samples([900, 1200, 40000])
    runs = [stress_run(OLD, [BUCKETED, None, Latency()]), stress_run(NEW, [exact])]
    caption = plots.update_latency(runs, tmp_path / "l.png")
    ax = figures[0].axes[0]
    assert ax.get_yscale() == "log"
    points = sorted(float(line.get_ydata()[0]) for line in ax.lines)
    want = [BUCKETED.p50_ns, BUCKETED.p99_ns, BUCKETED.max_ns, exact.p50_ns, exact.p99_ns,
            exact.max_ns]
    assert points == sorted(want)                      # the rows without latency: no points
    assert len(ax.get_xticklabels()) == 1 and "nmi" in caption and "No error bars" in caption
    # buckets without the largest value: the percentiles alone
    no_max = Latency.from_log2([0, 0, 3, 1], None)
    plots.update_latency([stress_run(OLD, [no_max])], tmp_path / "n.png")
    points = sorted(float(line.get_ydata()[0]) for line in figures[1].axes[0].lines)
    assert points == sorted([no_max.p50_ns, no_max.p99_ns])


def test_nothing_to_plot_is_none_and_no_file(tmp_path) -> None:
    refused = bench(OLD, False, [70, 71], type="lru_hash")
    refused.refused = Refusal(524, "ENOTSUPP", "map_flags", "no NO_PREALLOC for LRU")
    only_pre = [bench(OLD, True, [50, 51]), refused]
    cases = [
        lambda p: plots.speed_ratio([], p),
        lambda p: plots.speed_ratio(only_pre, p),
        lambda p: plots.memory_per_mode([], [], p),
        lambda p: plots.memory_per_mode([map_record(OLD, True, 100, skipped="no BTF")], [], p),
        lambda p: plots.update_latency([], p),
        lambda p: plots.update_latency([stress_run(OLD, [None, Latency()])], p),
    ]
    for i, case in enumerate(cases):
        path = tmp_path / f"{i}.png"
        assert case(path) is None, i
        assert not path.exists(), i


def test_bench_plot_has_error_bars_and_its_legend_outside(tmp_path, figures) -> None:
    records = [bench(OLD, p, [50 + d, 52 + d, 51 + d], cpus=c, max_entries=n, mode=m)
               for p, d in ((True, 0), (False, 20)) for c in (1, 2) for n in (1000, 100000)
               for m in Mode]
    bench_plot.plot(records, tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG
    fig = figures[0]
    assert_legend_outside(fig)
    ax_rate, ax_cost, _ = fig.axes
    spans = errorbar_spans(ax_cost)
    assert spans
    medians = {statistics.median([50 + d, 52 + d, 51 + d]) for d in (0, 20)}
    for _, low, high in spans:
        assert any(low <= m <= high for m in medians)
    assert errorbar_spans(ax_rate)
    assert "95%" in " ".join(t.get_text() for t in fig.texts)


def test_bench_plot_with_single_runs_says_no_error_bars(tmp_path, figures) -> None:
    records = [bench(OLD, p, [50.0 + 20 * (not p)], cpus=c) for p in (True, False) for c in (1, 2)]
    bench_plot.plot(records, tmp_path / "b.png")
    fig = figures[0]
    assert all(errorbar_spans(ax) == [] for ax in fig.axes)
    assert "no error bars" in " ".join(t.get_text() for t in fig.texts)
