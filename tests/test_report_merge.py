"""``report --merge`` knows machines: repeat runs of one machine pool their
samples, the same section from two machines is shown per machine and never
averaged, and a results.json from before machines were recorded is an unknown
machine of its own.  Synthetic records: no kernel, no VM."""

from __future__ import annotations

import json

from pybpfmap.bench.machine import Machine as BenchMachine
from pybpfmap.bench.record import BenchRecord, Mode, Spread
from pybpfmap.guest import Accel
from pybpfmap.records import from_json, to_json
from pybpfmap.report.machine import Machine
from pybpfmap.report.plan import BENCH_ENTRIES
from pybpfmap.report.pool import pool_bench
from pybpfmap.report.render import Report, render
from pybpfmap.report.run import SectionResult

EPYC = Machine("AMD EPYC 7763 64-Core Processor", 4, "6.8.0-1017-azure", None)
XEON = Machine("Intel(R) Xeon(R) Platinum 8370C CPU @ 2.80GHz", 4, "6.8.0-1017-azure", None)


def _bench(prealloc: bool, ns: list[float], where: str = "host",
           accel: Accel | None = None) -> BenchRecord:
    spread = Spread.of(ns)
    return BenchRecord(
        mode=Mode.INKERNEL, type="hash", prealloc=prealloc, max_entries=BENCH_ENTRIES, cpus=1,
        machine=BenchMachine("6.1.0-41-amd64", where, accel, "none", 2, 2, 1, False, True),
        runs=len(ns), ns_per_triple=spread, triples_per_sec_per_cpu=round(1e9 / spread.median))


def _part(tmp_path, name: str, machine: Machine | None, pre: list[float], no: list[float],
          where: str = "host") -> str:
    """A report folder with one bench section at ``where``, measured on ``machine``."""
    accel = machine.accel if machine else None
    section = SectionResult(
        "bench", where, "", ["bench", "--json"], f"bench-{where}", 180, seconds=100.0,
        status=0, data=to_json([_bench(True, pre, where, accel), _bench(False, no, where, accel)]),
        machine=machine, run=f"run {name}")
    folder = tmp_path / name
    (folder / section.folder).mkdir(parents=True)
    (folder / section.folder / "stdout.txt").write_text(name)
    doc = to_json(Report("then", f"pybpfmap report ({name})", "6.8.0", [where], 100.0, [section]))
    if machine is None:  # as an older pybpfmap wrote it
        for s in doc["sections"]:
            del s["machine"], s["run"]
    (folder / "results.json").write_text(json.dumps(doc))
    return str(folder)


def _merge(pybpfmap, tmp_path, *folders: str) -> tuple[Report, str]:
    out = tmp_path / "merged"
    pybpfmap("report", "--merge", *folders, "--out", str(out))
    report = from_json(Report, json.loads((out / "results.json").read_text()))
    return report, (out / "report.md").read_text()


def _rows(text: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith(f"| {first_cell} |")]


def _ns_cells(text: str, heading: str) -> list[str]:
    """The ns/triple cells of the prealloc rows of one rendered bench section
    (the seed-shaped tables: "prealloc  12.5 ns 80.00M ...")."""
    body = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    return [line.split()[1] for line in body.splitlines()
            if line.strip().startswith("prealloc ") and " ns " in line]


def test_pooling_combines_the_samples_of_every_run():
    pooled = pool_bench([[_bench(True, [10, 11, 12])], [_bench(True, [13, 14, 15])]])
    (r,) = pooled
    assert r.runs == 6 and r.ns_per_triple.values == [10, 11, 12, 13, 14, 15]
    assert (r.ns_per_triple.median, r.ns_per_triple.min, r.ns_per_triple.max) == (12.5, 10, 15)
    assert r.triples_per_sec_per_cpu == 80_000_000  # derived again from the pooled median
    # another measurement (no_prealloc) is not pooled with it
    assert len(pool_bench([[_bench(True, [10])], [_bench(False, [20])]])) == 2


def test_two_parts_from_one_machine_pool(pybpfmap, tmp_path):
    a = _part(tmp_path, "a", EPYC, [10, 11, 12], [20, 21, 22])
    b = _part(tmp_path, "b", EPYC, [13, 14, 15], [26, 27, 28])
    report, text = _merge(pybpfmap, tmp_path, a, b)
    # results.json keeps both runs, each with its machine and its own folder
    assert [(s.folder, s.machine, s.run) for s in report.sections] == [
        ("bench-host", EPYC, "run a"), ("bench-host.2", EPYC, "run b")]
    assert (tmp_path / "merged/bench-host.2/stdout.txt").read_text() == "b"
    # one section, one row: the medians of all six runs (12.5 and 24 ns)
    assert text.count("## bench@host") == 1 and "2 runs of this machine, pooled" in text
    assert _ns_cells(text, "## bench@host") == ["12.5"]
    across = text.split("## Across kernels\n")[1].split("\n## ")[0]
    (row,) = _rows(across, "host")
    assert "1.92x" in row and "| machine |" not in across
    assert "Not averaged" not in text


def test_two_parts_from_different_machines_are_not_averaged(pybpfmap, tmp_path):
    a = _part(tmp_path, "a", EPYC, [10, 11, 12], [20, 21, 22])
    b = _part(tmp_path, "b", XEON, [13, 14, 15], [26, 27, 28])
    report, text = _merge(pybpfmap, tmp_path, a, b)
    assert [s.machine for s in report.sections] == [EPYC, XEON]
    # each machine's absolute figures in its own labelled section; the pooled 12.5 nowhere
    assert _ns_cells(text, "## bench@host — M1") == ["11.0"]
    assert _ns_cells(text, "## bench@host — M2") == ["14.0"]
    assert "12.5" not in text
    # the across-kernels table: one row per machine, the ratios side by side
    rows = _rows(text.split("## Across kernels\n")[1].split("\n## ")[0], "host")
    assert [(r[1], r[-4]) for r in rows] == [("M1", "1.91x"), ("M2", "1.93x")]
    # the merge says it did not average, and which machine is which
    assert "Not averaged across machines: `bench@host` (M1, M2)" in text
    machines = {r[0]: r[1] for r in _rows(text, "M1") + _rows(text, "M2")}
    assert machines == {"M1": EPYC.cpu_model, "M2": XEON.cpu_model}


def test_one_host_under_kvm_and_under_tcg_is_two_machines(pybpfmap, tmp_path):
    kvm = Machine(EPYC.cpu_model, EPYC.cores, EPYC.host_kernel, Accel.KVM)
    tcg = Machine(EPYC.cpu_model, EPYC.cores, EPYC.host_kernel, Accel.TCG)
    a = _part(tmp_path, "a", kvm, [10, 11, 12], [20, 21, 22], where="bookworm")
    b = _part(tmp_path, "b", tcg, [400, 410, 420], [800, 810, 820], where="bookworm")
    _, text = _merge(pybpfmap, tmp_path, a, b)
    assert "## bench@bookworm — M1, kvm" in text and "## bench@bookworm — M1, tcg" in text
    assert "Not averaged across machines: `bench@bookworm` (M1, kvm, M1, tcg)" in text


def test_older_results_are_an_unknown_machine_never_pooled(pybpfmap, tmp_path):
    old = _part(tmp_path, "old", None, [10, 11, 12], [20, 21, 22])
    old2 = _part(tmp_path, "old2", None, [13, 14, 15], [26, 27, 28])
    new = _part(tmp_path, "new", EPYC, [13, 14, 15], [26, 27, 28])
    report, text = _merge(pybpfmap, tmp_path, old, old2, new)
    assert [s.machine for s in report.sections] == [None, None, EPYC]
    assert "Not averaged across machines: `bench@host` (unknown machine (" in text
    assert text.count("## bench@host — unknown machine (") == 2
    assert "## bench@host — M1" in text and "pooled" not in text
    assert "12.5" not in text


def test_a_merged_report_merges_again_without_pooling_a_run_twice(pybpfmap, tmp_path):
    a = _part(tmp_path, "a", EPYC, [10, 11, 12], [20, 21, 22])
    b = _part(tmp_path, "b", EPYC, [13, 14, 15], [26, 27, 28])
    _merge(pybpfmap, tmp_path, a, b)
    again = tmp_path / "again"
    pybpfmap("report", "--merge", str(tmp_path / "merged"), a, "--out", str(again))
    report = from_json(Report, json.loads((again / "results.json").read_text()))
    assert [s.run for s in report.sections] == ["run a", "run b"]
    assert _ns_cells(render(report), "## bench@host") == ["12.5"]


def test_a_kernel_you_bring_is_named_by_release_and_origin():
    from pybpfmap.report.render import across_kernels

    where, debs = "6.1.0-57-amd64", "/var/cache/pybpfmap/vm/debs"
    bench = SectionResult(
        "bench", where, "", ["bench", "--kernel", debs, "--json"], f"bench-{where}", 180,
        seconds=100.0, status=0,
        data=to_json([_bench(True, [100.0], where), _bench(False, [150.0], where)]))
    catalog = SectionResult(
        "bench", "bookworm", "", ["bench", "--kernel", "bookworm", "--json"], "bench-bookworm",
        180, seconds=100.0, status=0,
        data=to_json([_bench(True, [100.0], "bookworm"), _bench(False, [150.0], "bookworm")]))
    table = across_kernels(Report("then", "pybpfmap report", "6.8.0", [where, "bookworm"],
                                  200.0, [bench, catalog]))
    assert f"| {where} (from {debs}) |" in table and "| bookworm |" in table
