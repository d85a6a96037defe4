"""Real bpfcc-tools under pybpfmap bcc-compare: kernel-verified flags, output, cleanup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from pybpfmap import bpfsys
from pybpfmap.bcc_compare import compare, report, run, tools, verify
from pybpfmap.bcc_compare.run import Measurement, ToolRun
from pybpfmap.cli import main
from pybpfmap.errors import UsageError
from pybpfmap.vm.guest import in_test_vm

EXPECTED = {"shipped": 0, "noprealloc": bpfsys.F_NO_PREALLOC}
SHORT = 0.3

# In the test VM (TCG in CI: a tool start takes about a minute) only the kprobe
# tools run; the others are covered by the host run of this file.
host_run = pytest.mark.skipif(in_test_vm(),
                              reason="covered by the host run; in the VM only kprobe tools run")


def _check_run(tool: tools.Tool, mode: str) -> None:
    try:
        r = run.with_tool(tool, mode, SHORT)
    except run.ToolFailed as e:
        if tool.needs_kprobes and "not traceable" in str(e):
            # e.g. bcc 0.26 biolatency on Linux 6.1: blk_account_io_done is inlined
            pytest.skip(f"this bcc's tool cannot attach on this kernel: {e}")
        raise
    assert r.evidence, "tool printed its normal output"
    assert r.ops > 0
    maps = r.maps["maps"]
    for name in tool.hash_maps:
        assert maps[name]["type"] == 1  # BPF_MAP_TYPE_HASH
        assert maps[name]["map_flags"] == EXPECTED[mode], (name, maps[name])
    assert not verify.still_loaded({m["id"] for m in maps.values()}), "maps outlived the tool"


@host_run
@pytest.mark.root
@pytest.mark.parametrize("mode", run.MODES)
def test_runqlat_flags_and_output(mode: str) -> None:
    _check_run(tools.TOOLS["runqlat"], mode)


@host_run
@pytest.mark.root
@pytest.mark.parametrize("mode", run.MODES)
def test_funclatency_uprobe_flags_and_output(mode: str) -> None:
    _check_run(tools.TOOLS["funclatency"], mode)


# Kprobe tools run in the test VM, where CI has only TCG: one tool start there
# takes about a minute, so these check the rewritten mode only (the shipped
# mode's flags are checked on the host tools above).
@pytest.mark.root
@pytest.mark.kprobes
def test_tcpconnect_rewritten_flags_and_output() -> None:
    _check_run(tools.TOOLS["tcpconnect"], "noprealloc")


@pytest.mark.root
@pytest.mark.kprobes
def test_biolatency_rewritten_flags_and_output() -> None:
    _check_run(tools.TOOLS["biolatency"], "noprealloc")


@host_run
@pytest.mark.root
def test_interrupted_tool_leaves_nothing() -> None:
    """An exception while the tool runs (as Ctrl-C would be) kills its group."""
    tool = tools.TOOLS["runqlat"]
    with pytest.raises(KeyboardInterrupt), run.running_tool(tool, "noprealloc") as t:
        pid = t.proc.pid
        ids = {m["id"] for m in t.maps()["maps"].values()}
        assert ids
        raise KeyboardInterrupt
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not verify.still_loaded(ids)


@pytest.mark.root
def test_kprobe_tool_skipped_with_reason(kernel) -> None:
    if kernel.kprobes:
        pytest.skip("this kernel has kprobes: tcpconnect runs here")
    recs = compare.compare(["tcpconnect"], duration=SHORT, runs=1, log=None)
    assert [r["status"] for r in recs] == ["skipped"]
    assert "needs kprobes (tcp_v4_connect)" in recs[0]["reason"]
    assert "--kernel bookworm" in recs[0]["reason"]


def test_unknown_tool_is_usage_error(capsys) -> None:
    with pytest.raises(UsageError, match="valid: .*runqlat"):
        tools.select(["nope"])
    assert main(["bcc-compare", "--tools", "nope"]) == 2
    assert "unknown tool nope" in capsys.readouterr().err


def test_bad_duration_and_runs() -> None:
    assert main(["bcc-compare", "--duration", "0"]) == 2
    assert main(["bcc-compare", "--runs", "0"]) == 2


def test_overhead_math() -> None:
    assert report.overhead_ns(1e6, 5e5) == pytest.approx(1000.0)
    s = report.spread([1.0, 2.0, 3.0])
    assert (s["median"], s["min"], s["max"]) == (2.0, 1.0, 3.0)
    assert s["cv"] == pytest.approx(0.5)
    assert report.spread([5.0])["cv"] is None


def test_record_format() -> None:
    """The keys the report command relies on."""
    tool = tools.TOOLS["runqlat"]
    m = Measurement(tool, 1.0, baseline=[(1000, 1.0), (1100, 1.0)])
    for mode, flags, ops in (("shipped", 0, 900), ("noprealloc", 1, 800)):
        maps = {"maps": {"start": {"id": 1, "name": "start", "type": 1, "map_flags": flags}},
                "unused": []}
        m.runs[mode] = [ToolRun(mode, ops, 1.0, maps, "usecs : count", 10)] * 2
    recs = report.records(m, "host", "6.x")
    assert [(r["prealloc"], r["map_flags"]) for r in recs] == [(True, {"start": 0}),
                                                               (False, {"start": 1})]
    for r in recs:
        for key in ("tool", "prealloc", "map_flags", "baseline", "with_tool",
                    "overhead_ns_per_event", "where", "kernel", "runs", "spread"):
            assert key in r
    assert recs[0]["baseline"] == 1050
    assert recs[1]["vs_shipped_ns_per_event"] > 0
    assert "runqlat" in report.table(recs)


@pytest.mark.root
def test_in_guest_entry_writes_results(tmp_path, monkeypatch, kernel, capsys) -> None:
    """What the VM runs: records land in $PYBPFMAP_RESULTS/bcc-compare.json."""
    if kernel.kprobes:
        pytest.skip("this kernel has kprobes: tcpconnect would really run")
    monkeypatch.setenv("PYBPFMAP_RESULTS", str(tmp_path))
    rc = main(["bcc-compare", "--in-guest", "vm:test", "--tools", "tcpconnect",
               "--runs", "1", "--duration", "0.3", "--json"])
    assert rc == 0
    recs = json.loads((tmp_path / compare.RESULTS_FILE).read_text())
    assert recs == json.loads(capsys.readouterr().out)
    assert [(r["tool"], r["status"], r["where"]) for r in recs] == [
        ("tcpconnect", "skipped", "vm:test")]


KILLED_PARENT = """
import sys, time
from pybpfmap.bcc_compare import run, tools
with run.running_tool(tools.TOOLS["runqlat"], "shipped") as t:
    ids = [m["id"] for m in t.maps()["maps"].values()]
    print(t.proc.pid, *ids, flush=True)
    time.sleep(60)
"""


@host_run
@pytest.mark.root
def test_tool_dies_with_killed_parent() -> None:
    """pybpfmap SIGKILLed mid-run (no finally runs): the tool still goes away."""
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT], stdout=subprocess.PIPE,
                              text=True)
    try:
        pid, *ids = (int(x) for x in parent.stdout.readline().split())
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail("the tool outlived its killed parent")
    assert ids and not verify.still_loaded(set(ids))
