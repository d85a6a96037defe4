"""The report: sections run with time limits and clean up, each renders its own
records, the across-kernels table compares like with like, and --merge of
separate runs gives the same table as one run."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pybpfmap.records import from_json, to_json
from pybpfmap.report import machine
from pybpfmap.report import plan as plan_mod
from pybpfmap.report.plan import Section, plan
from pybpfmap.report.render import Report, across_kernels, render
from pybpfmap.report.run import run_all, run_section
from pybpfmap.stress.scenarios import SCENARIOS
from pybpfmap.vm import catalog
from tests import stress_leftovers as leftovers


def _report(results, places=("host",)) -> Report:
    return Report("now", "test", "x", list(places), 0, list(results))


@pytest.fixture(scope="module")
def host_sections(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    sections = [Section("info", "host", ("info", "--json"), 60),
                Section("maps", "host", ("maps", "--json", "--max-entries",
                                         str(plan_mod.MAPS_ENTRIES), "--types", "hash"), 60)]
    return out, run_all(sections, out)


@pytest.mark.root
def test_sections_run_and_every_record_renders_a_row(host_sections):
    _, results = host_sections
    assert [r.error for r in results] == [None, None]
    text = render(_report(results))
    assert "## Across kernels" in text and "## What each kernel era predicts" in text
    assert "## Time per section" in text
    maps = next(r for r in results if r.name == "maps").data
    for rec in maps:
        alloc = "prealloc" if rec["prealloc"] else "no_prealloc"
        assert f"| {rec['type']} | {alloc} | {plan_mod.MAPS_ENTRIES} |" in text
    (info,) = next(r for r in results if r.name == "info").data
    assert info["kernel_release"] in text


@pytest.mark.root
def test_across_kernels_table_uses_one_max_entries_and_real_memory(host_sections):
    _, results = host_sections
    table = across_kernels(_report(results))
    row = next(line for line in table.splitlines() if line.startswith("| host |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    head = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert cells[1] == results[0].data[0]["kernel_release"]
    memory = [cells[i] for i, h in enumerate(head) if "MiB (full" in h]
    assert len(memory) == 2 and "–" not in memory   # memory figures for both allocation modes
    assert [h for h in head if h.startswith("stress: ")] == [
        f"stress: {name}" for name in SCENARIOS]
    assert f"(full, {plan_mod.MAPS_ENTRIES})" in table


@pytest.mark.root
def test_merge_reproduces_the_across_kernels_table(pybpfmap, host_sections, tmp_path):
    out, results = host_sections
    # One machine ran both (a merge keeps machines apart: test_report_merge.py).
    here = machine.probe()
    results = [dataclasses.replace(r, machine=here) for r in results]
    # A second place, as a separate report of its own (the same records, another name).
    other = [dataclasses.replace(r, where="bookworm", folder=r.folder + "-b") for r in results]
    for r in other:
        (out / r.folder).mkdir(exist_ok=True)
    one_run = _report([*results, *other], ("host", "bookworm"))
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, part, places in ((a, results, ["host"]), (b, other, ["bookworm"])):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(to_json(_report(part, places))))
    merged = tmp_path / "merged"
    pybpfmap("report", "--merge", str(a), str(b), "--out", str(merged))
    report = from_json(Report, json.loads((merged / "results.json").read_text()))
    assert report.places == ["host", "bookworm"]
    assert across_kernels(report) == across_kernels(one_run)
    assert "## Across kernels" in (merged / "report.md").read_text()


def test_merge_bad_input_is_one_clear_line(pybpfmap, tmp_path):
    p = pybpfmap("report", "--merge", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                 expect=1)
    assert "--merge:" in p.stderr and "Traceback" not in p.stderr
    p = pybpfmap("report", "--merge", str(tmp_path), "--kernel", "bookworm", expect=2)
    assert "--merge" in p.stderr


@pytest.mark.root
def test_failed_and_stopped_sections_are_recorded(tmp_path):
    bad = run_section(Section("maps", "host", ("maps", "--json", "--max-entries", "0",
                                                "--types", "hash"), 60), tmp_path)
    assert bad.status == 1 and "--max-entries: EINVAL" in bad.error
    slow = run_section(Section("maps", "slow", ("maps", "--json", "--max-entries", "3000000",
                                                 "--types", "percpu_hash"), 1), tmp_path,
                       limit=0.5)
    assert slow.stopped and "time limit" in slow.error
    text = render(_report([bad, slow], ("host", "slow")))
    assert "## Sections that failed" in text and "EINVAL" in text


@pytest.mark.root
def test_a_stress_section_stopped_by_its_time_limit_leaves_nothing(tmp_path):
    """SIGINT at the limit: kprobe_events, bpftool's program and map lists and
    the network namespaces are as they were."""
    from pybpfmap.stress.allocator import tracepoints_available

    if not tracepoints_available()[0]:
        pytest.skip("none of the lock:/kmem: tracepoints exist here: "
                    + "; ".join(tracepoints_available()[1].values()))
    before = leftovers.snapshot()
    res = run_section(Section("stress", "host", ("stress", "--tracepoints", "--duration", "120",
                                                  "--types", "hash/prealloc", "--json"), 1),
                      tmp_path, limit=12)
    assert res.stopped and res.seconds < 120, res  # stopped before its own duration ran out
    assert leftovers.settled(before) == {}


def test_plan_puts_kprobe_parts_in_the_vm_and_never_forces():
    sections = plan(catalog.resolve(["bullseye", "bookworm"]), quick=False, host_kprobes=False,
                    host_in_vm=True)
    keys = {s.key for s in sections}
    for kernel in ("bullseye", "bookworm"):
        assert {f"stress-allocator@{kernel}", f"stress-reentry@{kernel}",
                f"info@{kernel}", f"maps@{kernel}"} <= keys
    assert all("--force" not in s.argv for s in sections)
    host_stress = next(s for s in sections if s.key.startswith("stress") and s.where == "host")
    assert "--tracepoints" in host_stress.argv
    assert all("--kernel" in s.argv for s in sections if s.where != "host")
    # rows in their own boots where the era predicts a deadlock (60 s each there), the
    # others in one: the budget counts a boot per predicted deadlock
    by = {s.key: s for s in sections}
    assert all("--isolate-risky" in s.argv for s in sections if s.name == "stress"
               and s.where != "host")
    assert "60" in by["stress-allocator@bullseye"].argv
    assert by["stress-nmi@bullseye"].budget > by["stress-nmi@bookworm"].budget
    assert "stress-nmi@host" not in keys   # the host injects NMIs only into its test VM
    # maps everywhere at the same size
    sizes = {s.argv[s.argv.index("--max-entries") + 1] for s in sections if s.name == "maps"}
    assert sizes == {str(plan_mod.MAPS_ENTRIES)}


def test_default_plan_is_the_era_contrast():
    sections = plan(catalog.resolve(["bullseye", "bookworm"]), quick=False, host_kprobes=False,
                    host_in_vm=True, full=False)
    keys = {s.key for s in sections}
    for where in ("host", "bullseye", "bookworm"):
        assert {f"info@{where}", f"maps@{where}", f"maps-from-bpf@{where}",
                f"bench@{where}", f"stress-allocator@{where}"} <= keys, keys
    # the seed's deadlock: NO_PREALLOC percpu_hash on 5.10, in its own boot
    alloc = next(s for s in sections if s.key == "stress-allocator@bullseye")
    assert "percpu_hash/no_prealloc" in ",".join(alloc.argv)
    assert "--isolate-risky" in alloc.argv
    # the lean report leaves out what the answer does not need (its 15 minutes are
    # measured, docs/measurements.md, not asserted)
    assert "bcc-compare" not in {s.name for s in sections}
    assert not any(s.scenario in ("nmi", "nmi-slot", "writers") for s in sections)


def test_report_cli_rejects_unknown_kernel_and_section(pybpfmap, tmp_path):
    p = pybpfmap("report", "--kernel", "nosuch", "--out", str(tmp_path), expect=2)
    assert "--kernel" in p.stderr and "Traceback" not in p.stderr
    p = pybpfmap("report", "--only", "maps,nope", "--out", str(tmp_path), expect=2)
    assert "--only" in p.stderr


@pytest.mark.root
def test_report_command_writes_complete_files(pybpfmap, tmp_path):
    out = tmp_path / "rep"
    pybpfmap("report", "--no-vm", "--quick", "--only", "info,maps", "--out", str(out))
    results = json.loads((out / "results.json").read_text())
    assert [(s["name"], s["where"]) for s in results["sections"]] == [("info", "host"),
                                                                    ("maps", "host")]
    assert all(s["data"] and s["error"] is None for s in results["sections"])
    report = (out / "report.md").read_text()
    assert report.startswith("# pybpfmap report")
    assert "## maps@host" in report and "| hash | no_prealloc |" in report
    for s in results["sections"]:
        assert (out / s["folder"] / "stdout.txt").exists()
