"""Real bpfcc-tools under pybpfmap bcc-compare: kernel-verified flags, interleaved
windows with parked probes, output, "not comparable", skips with BCC's reason, cleanup."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys

import pytest

from pybpfmap import bpfsys, procs
from pybpfmap.bcc_compare import compare, deadline, failures, process, result, run, tools, verify
from pybpfmap.bcc_compare.launcher import rewrite_text
from pybpfmap.bcc_compare.result import NOT_COMPARABLE, OK, SKIPPED, BccRecord
from pybpfmap.guest import Accel, in_test_vm
from tests.helpers import kprobe_refusals

EXPECTED_FLAGS = {"shipped": 0, "noprealloc": bpfsys.F_NO_PREALLOC}
SHORT = 0.3
RUNS = 2

# In the test VM (TCG in CI) only the kprobe tools run; the others are covered
# by the host run of this file.
host_run = pytest.mark.skipif(in_test_vm(),
                              reason="covered by the host run; in the VM only kprobe tools run")


def _compare(name: str) -> BccRecord:
    [rec] = compare.compare_here([tools.TOOLS[name]], SHORT, RUNS, log=None)
    return rec


def _check_measured(rec: BccRecord, tool: tools.Tool) -> None:
    """What a measured record must show, every part read from the kernel or the tool."""
    assert rec.status == OK, rec.verdict
    for mode in (rec.shipped, rec.noprealloc):
        for name in tool.hash_maps:
            m = mode.maps[name]
            assert m.type == 1, (mode.mode, m)  # BPF_MAP_TYPE_HASH
            assert m.map_flags == EXPECTED_FLAGS[mode.mode], (mode.mode, m)
        assert mode.attachments > 0
        assert mode.output and re.search(tool.output, mode.output)
        assert mode.overhead_ns.n == RUNS
    # ABAB: B S N, B N S; each window did work
    assert [(w.round, w.slot) for w in rec.windows] == [
        (0, "baseline"), (0, "shipped"), (0, "noprealloc"),
        (1, "baseline"), (1, "noprealloc"), (1, "shipped")]
    assert all(w.ops > 0 for w in rec.windows)
    assert rec.difference_ns is not None and rec.difference_ns.defined
    assert rec.verdict.startswith(("NO_PREALLOC costs", "no significant difference"))
    assert rec.isolation.startswith("checked on the kernel"), rec.isolation
    ids = {m.id for mode in (rec.shipped, rec.noprealloc) for m in mode.maps.values()}
    assert not verify.still_loaded(ids), "maps outlived the tool"


@host_run
@pytest.mark.root
@pytest.mark.parametrize("name", ["runqlat", "funclatency", "tcplife", "syscount"])
def test_host_tool_measured(name: str) -> None:
    """Raw tracepoints (runqlat), uprobes (funclatency), tracepoints (tcplife,
    syscount): both modes loaded once, parked and resumed around their windows."""
    _check_measured(_compare(name), tools.TOOLS[name])


# Kprobe tools run in the test VM, where CI has only TCG: each start compiles
# the tool (tens of seconds); the start-up deadline scales with the machine.
@pytest.mark.root
@pytest.mark.kprobes
def test_tcpconnect_measured() -> None:
    """Measured, or skipped because this BCC cannot compile it against this
    kernel's headers (trixie's BCC 0.30 and 7.3's <net/sock.h>) -- and then
    that is true."""
    rec = _compare("tcpconnect")
    if rec.status == OK:
        _check_measured(rec, tools.TOOLS["tcpconnect"])
    else:
        _check_not_compilable(rec, "net/sock.h")


def _check_not_compilable(rec: BccRecord, header: str) -> None:
    """Skipped (not a failed run, not a pytest skip) with clang's first error,
    and the reason is true: BCC cannot compile a program that only includes
    the tool's kernel ``header`` here either."""
    from bcc import BPF

    assert rec.status == SKIPPED, rec.verdict
    assert "cannot compile" in rec.verdict and ": error: " in rec.verdict, rec.verdict
    assert rec.baseline is None and rec.windows == []
    with pytest.raises(Exception):  # noqa: B017 (bcc raises bare Exception)
        BPF(text=f"#include <{header}>\nint probe(void *ctx) {{ return 0; }}\n").cleanup()


def _check_not_attachable(rec: BccRecord, tool: tools.Tool) -> None:
    """Skipped with BCC's own reason: one of the tool's kprobe targets is not
    traceable here -- and that is true: BCC cannot put a kprobe on it either."""
    assert rec.status == SKIPPED, rec.verdict
    assert "cannot attach on this kernel" in rec.verdict, rec.verdict
    assert "it's not traceable" in rec.verdict, rec.verdict
    target = re.search(r"to kprobe b'([^']+)'", rec.verdict)
    assert target and target[1].lstrip("_") in tool.kprobe_targets, rec.verdict
    assert kprobe_refusals([target[1]])[target[1]], f"{target[1]} takes a kprobe here"
    assert rec.baseline is None and rec.windows == []


@pytest.mark.root
@pytest.mark.kprobes
def test_biolatency_measured_or_skipped_with_bccs_reason() -> None:
    """Where biolatency can attach it is measured (trixie's 6.12); where it
    cannot (Debian's 6.1 with bcc 0.26: blk_account_io_done is not traceable),
    the harness reports it skipped with BCC's own reason, which must be true --
    not a failed run, not a pytest skip."""
    tool = tools.TOOLS["biolatency"]
    rec = _compare("biolatency")
    if rec.status == OK:
        _check_measured(rec, tool)
    elif "cannot compile" in rec.verdict:
        _check_not_compilable(rec, "linux/blk-mq.h")
    else:
        _check_not_attachable(rec, tool)


@pytest.mark.root
def test_opensnoop_not_comparable_on_a_kfunc_kernel(kernel) -> None:
    """BCC's opensnoop takes its kfunc path when BCC supports kfunc here: that
    text has no BPF_HASH, so there is nothing to compare (never a measurement)."""
    from bcc import BPF

    kfunc = BPF.support_kfunc()
    rec = _compare("opensnoop")
    if kfunc:
        assert rec.status == NOT_COMPARABLE, rec.verdict
        assert rec.verdict.startswith("not comparable: no hash map to rewrite")
        assert "kfunc" in rec.verdict
        assert rec.baseline is None and rec.windows == [] and rec.difference_ns is None
    else:  # kprobe path: infotmp is rewritten
        assert rec.status in (OK, SKIPPED), rec.verdict
        assert rec.status == OK or not kernel.kprobes


STAND_IN = """
import time
from bcc import BPF
BPF(text=b"{text}")
print("Tracing nothing... Hit Ctrl-C to end.", flush=True)
time.sleep(3600)
"""


@host_run
@pytest.mark.root
def test_unchanged_text_is_not_compared(tmp_path) -> None:
    """A tool whose text the rewrite leaves alone is reported before BCC compiles it."""
    script = tmp_path / "stand-in"
    script.write_text(STAND_IN.format(text="int f(void *ctx) { return 0; }"))
    tool = tools.Tool("standin", (), "getpid", "nothing", False, r"Tracing", (),
                      script=str(script))
    with pytest.raises(failures.NotComparable, match="no hash map to rewrite"):
        run.measure_tool(tool, SHORT, RUNS, log=None)


FAILING_STAND_IN = """
import time
from bcc import BPF
BPF(text=b"BPF_HASH(start, u32); {text}").load_func(b"f", BPF.SOCKET_FILTER)
print("Tracing nothing... Hit Ctrl-C to end.", flush=True)
time.sleep(3600)
"""


@host_run
@pytest.mark.root
@pytest.mark.parametrize("text, kind, detail", [
    ("int f(struct __sk_buff *skb) { return *(volatile u32 *)((char *)skb + 4000); }",
     failures.BccRefused, "invalid bpf_context access"),
    ("int f(void *ctx) { return undeclared; }",
     failures.BccNotCompilable, "error: use of undeclared identifier 'undeclared'"),
])
def test_bccs_words_are_typed_where_read(tmp_path, text, kind, detail) -> None:
    """What real BCC prints when the verifier refuses a tool's program, or
    clang cannot compile it, reaches the caller as a type with the details
    (errno, the verifier's words, clang's error), and the message still
    names the tool, its mode and how it ended."""
    script = tmp_path / "stand-in"
    script.write_text(FAILING_STAND_IN.format(text=text))
    tool = tools.Tool("standin", (), "getpid", "nothing", False, r"Tracing", (),
                      script=str(script))
    with pytest.raises(kind) as e:
        run.measure_tool(tool, SHORT, RUNS, log=None)
    assert type(e.value) is kind
    assert str(e.value).startswith("standin (shipped) exited with status 1 before tracing: ")
    if kind is failures.BccRefused:
        assert e.value.err == errno.EACCES and detail in e.value.verifier
    else:
        assert detail in e.value.clang_error


@pytest.mark.root
def test_kprobe_tool_skipped_with_reason(kernel) -> None:
    if kernel.kprobes:
        pytest.skip("this kernel has kprobes: tcpconnect runs here")
    rec = _compare("tcpconnect")
    assert rec.status == SKIPPED
    assert "needs kprobes (tcp_v4_connect)" in rec.verdict
    assert "--kernel bookworm" in rec.verdict


def test_start_deadline_scales_with_this_machine(monkeypatch) -> None:
    """A tool takes 2 to 10 times as long to start as the trivial program the
    machine is calibrated with (bookworm under TCG: tcpconnect 23 s against
    2.5 s): the deadline leaves room for that, grows with the machine's time,
    and a very fast machine still gets a floor of some seconds."""
    def deadline_for(calibration: float) -> float:
        monkeypatch.setattr(deadline, "compile_calibration", lambda: calibration)
        return deadline.start_deadline()

    assert deadline_for(2.5) > 23 and deadline_for(2.5) >= 10 * 2.5
    assert deadline_for(20.0) == pytest.approx(2 * deadline_for(10.0))
    assert deadline_for(0.001) == deadline_for(0.01) >= 10


@host_run
@pytest.mark.root
def test_park_and_resume_move_the_probes() -> None:
    """Kernel evidence that parking detaches and resuming re-attaches the same
    programs: their run counts stay still, then move."""
    tool = tools.TOOLS["runqlat"]
    with process.running_tool(tool, "noprealloc") as t, bpfsys.stats_enabled():
        progs_before = set(verify.prog_ids(t.proc.pid))
        opened = t.park(60)
        assert opened > 0
        c0 = verify.prog_run_counts(t.proc.pid)
        subprocess.run([sys.executable, "-m", "pybpfmap.workloads",
                        "wakeups", "0.2"], check=True, capture_output=True)
        c1 = verify.prog_run_counts(t.proc.pid)
        assert c1 == c0, "a parked program ran"
        assert t.resume(60) == opened
        subprocess.run([sys.executable, "-m", "pybpfmap.workloads",
                        "wakeups", "0.2"], check=True, capture_output=True)
        c2 = verify.prog_run_counts(t.proc.pid)
        assert sum(c2.values()) > sum(c1.values()), "the resumed programs did not run"
        assert set(verify.prog_ids(t.proc.pid)) == progs_before, "programs were reloaded"


@host_run
@pytest.mark.root
def test_interrupted_tool_leaves_nothing() -> None:
    """An exception while the tool runs (as Ctrl-C would be) kills its group."""
    tool = tools.TOOLS["runqlat"]
    with pytest.raises(KeyboardInterrupt), process.running_tool(tool, "noprealloc") as t:
        pid = t.proc.pid
        ids = {m["id"] for m in t.maps()["maps"].values()}
        assert ids
        raise KeyboardInterrupt
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not verify.still_loaded(ids)


def _maps_named(name: str) -> set[int]:
    out = set()
    for i in bpfsys.all_ids(bpfsys.MAP_GET_NEXT_ID):
        try:
            if verify.map_record(i)["name"] == name:
                out.add(i)
        except OSError:
            continue
    return out


@host_run
@pytest.mark.root
def test_ctrl_c_on_the_command_leaves_nothing(ctrl_c) -> None:
    """Ctrl-C in the middle of `pybpfmap bcc-compare` (a tool attached): exit
    130, tools and maps gone."""
    before, launchers_before = _maps_named("start"), _launchers()
    seen: set[int] = set()
    launchers: set[int] = set()

    def loaded() -> None:
        seen.update(_maps_named("start") - before)
        launchers.update(_launchers() - launchers_before)

    done = ctrl_c(["bcc-compare", "--tools", "runqlat", "--runs", "50"], timeout=300,
                  at_ready=loaded)
    assert done.returncode == 130, done.stderr
    assert "interrupted" in done.stderr
    assert launchers, "no tool process was seen"
    assert seen, "no map of the tool was seen"
    assert not verify.still_loaded(seen), "maps outlived Ctrl-C"
    assert not launchers & _launchers(), "tool processes outlived Ctrl-C"


def _launchers() -> set[int]:
    """PIDs of processes running pybpfmap's launcher (tool processes)."""
    out = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"pybpfmap.bcc_compare.launcher" in f.read():
                    out.add(int(pid))
        except OSError:
            continue
    return out


KILLED_PARENT = """\
import time
from pybpfmap.bcc_compare import process, tools
with process.running_tool(tools.TOOLS["runqlat"], "shipped") as t:
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
    # A cap, not a timing bound: the kernel's PDEATHSIG and the guard act at
    # once, but a loaded machine may take a while to run the dying tool.
    if not procs.wait_until(lambda: not procs.live_members(pid), 30, 0.05):
        os.kill(pid, 9)
        pytest.fail("the tool outlived its killed parent")
    assert ids and not verify.still_loaded(set(ids))


def test_launcher_reports_rewritability() -> None:
    kfunc = "KRETFUNC_PROBE(do_sys_open, int dfd) { return 0; }"
    text, info = rewrite_text(kfunc, "noprealloc")
    assert text == kfunc and not info["rewritable"] and info["kinds"] == ["kfunc"]
    text, info = rewrite_text(b"BPF_HASH(start, u32);", "shipped")
    assert text == b"BPF_HASH(start, u32);"
    assert info["rewritable"] and info["bpf_hash"] == ["start"]
    text, _ = rewrite_text(b"BPF_HASH(start, u32);", "noprealloc")
    assert b"BPF_F_NO_PREALLOC" in text
    assert rewrite_text(b"", "noprealloc")[1]["empty"]


def test_not_run_records_say_why() -> None:
    rec = result.not_run(tools.TOOLS["biolatency"], SKIPPED, "cannot attach", "vm:bookworm",
                         "6.1", Accel.TCG, "0.26.0")
    assert rec.verdict == "skipped: cannot attach"
    assert "skipped: cannot attach" in result.render_markdown([rec])


