"""The report: its files are complete and valid, failures are recorded, not hidden."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pybpfmap.report.plan import Section, plan
from pybpfmap.report.render import render
from pybpfmap.report.run import run_all

pytestmark = pytest.mark.root


def _results(records, places=("host",)):
    return {"generated": "now", "command": "test", "host_release": "x",
            "places": list(places), "seconds": 0, "sections": records}


def test_sections_run_and_render(tmp_path):
    sections = [Section("info", "host", ["info", "--json"], 60),
                Section("maps", "host", ["maps", "--json", "--max-entries", "100",
                                         "--type", "hash"], 60)]
    records = run_all(sections, tmp_path)
    assert [r["error"] for r in records] == [None, None]
    info, maps = (r["data"] for r in records)
    assert info["kernel_release"]
    assert {(m["type"], m["prealloc"]) for m in maps} == {("hash", True), ("hash", False)}
    text = render(_results(records))
    assert "## Across kernels" in text
    assert "| hash | prealloc | 0x0 |" in text and "| hash | no_prealloc | 0x1 |" in text
    assert "## What each kernel era predicts" in text
    assert info["kernel_release"] in text


def test_failed_and_hung_sections_are_recorded(tmp_path):
    sections = [Section("maps", "host", ["maps", "--json", "--max-entries", "0",
                                         "--type", "hash"], 60),
                Section("maps", "slow", ["maps", "--json", "--max-entries", "3000000",
                                         "--type", "percpu_hash"], 0.5)]
    bad, slow = run_all(sections, tmp_path)
    assert bad["status"] == 1
    assert "--max-entries: EINVAL" in bad["error"]
    assert slow["status"] is None and "did not finish" in slow["error"]
    text = render(_results([bad, slow], places=("host", "slow")))
    assert "## Sections that failed" in text and "EINVAL" in text


def test_plan_puts_kprobe_parts_in_the_vm():
    sections = plan(["bookworm", "trixie"], quick=True, host_kprobes=False)
    where = {(s.name, s.where) for s in sections}
    assert ("stress", "bookworm") in where and ("stress", "trixie") in where
    host_stress = next(s for s in sections if s.key == "stress@host")
    assert "--tracepoints" in host_stress.argv
    assert all("--kernel" in s.argv for s in sections if s.where != "host"
               and s.name != "info+maps")


def test_report_cli_rejects_unknown_kernel(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pybpfmap", "report", "--kernel", "nosuch",
                             "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "--kernel" in result.stderr and "Traceback" not in result.stderr


def test_report_command_writes_complete_files(tmp_path):
    out = tmp_path / "rep"
    result = subprocess.run([sys.executable, "-m", "pybpfmap", "report", "--no-vm", "--quick",
                             "--only", "info,maps", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert [(s["name"], s["where"]) for s in results["sections"]] == [("info", "host"),
                                                                    ("maps", "host")]
    assert all(s["data"] and s["error"] is None for s in results["sections"])
    report = (out / "report.md").read_text()
    assert report.startswith("# pybpfmap report")
    assert "## maps on host" in report and "| hash | no_prealloc | 0x1 |" in report
    for s in results["sections"]:
        assert (out / s["folder"] / "stdout.txt").exists()


def test_report_only_rejects_unknown_section(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pybpfmap", "report", "--only", "maps,nope",
                             "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "--only" in result.stderr
