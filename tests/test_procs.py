"""pybpfmap.procs: child processes in groups of their own, stopped and killed
as a whole, also when pybpfmap itself is SIGKILLed.  No root, no VM.

Every wait here is a cap that only keeps a test from hanging (a liveness
bound), never a timing or speed assertion.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pybpfmap import procs

REPO = Path(__file__).resolve().parent.parent
CAP = 30.0  # s: a liveness cap, not a timing assertion


def _state(pid: int) -> tuple[str, int] | None:
    """(state, pgid) of ``pid`` from /proc, None if there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return fields[0], int(fields[2])


def _alive_in(pid: int, pgid: int) -> bool:
    """Whether /proc lists ``pid`` as a live (not zombie) member of ``pgid``."""
    pids = {int(n) for n in os.listdir("/proc") if n.isdigit()}
    if pid not in pids:
        return False
    st = _state(pid)
    return st is not None and st[1] == pgid and st[0] not in ("Z", "X")


def _shell_with_a_background_sleep(**kwargs) -> tuple[procs.Child, int]:
    """``sh`` leading a group, with a ``sleep 600`` it forked (a background job
    of a non-interactive shell ignores SIGINT); the Child and the sleep's pid."""
    c = procs.Child(["sh", "-c", "sleep 600 & echo $!; wait"], stdout=subprocess.PIPE,
                    text=True, **kwargs)
    sleep = int(c.popen.stdout.readline())
    c.popen.stdout.close()
    return c, sleep


def test_stop_leaves_no_member_alive() -> None:
    c, sleep = _shell_with_a_background_sleep()
    with c:
        assert sleep in procs.live_members(c.group.pgid)
        c.stop(grace=5)
        assert procs.live_members(c.group.pgid) == []
        assert not _alive_in(sleep, c.group.pgid)
        assert c.returncode is not None


PARENT = textwrap.dedent("""
    import subprocess, sys, time
    sys.path.insert(0, sys.argv[1])
    from pybpfmap import procs
    c = procs.Child(["sh", "-c", "sleep 600 & echo $!; wait"], stdout=subprocess.PIPE,
                    text=True)
    sleep = c.popen.stdout.readline().strip()
    print(c.group.pgid, sleep, flush=True)
    time.sleep(600)
""")


def test_group_dies_with_a_sigkilled_parent() -> None:
    """No ``finally`` runs in a SIGKILLed pybpfmap: the child dies by
    PR_SET_PDEATHSIG, what it forked by the guard."""
    with procs.Child([sys.executable, "-c", PARENT, str(REPO)],
                     stdout=subprocess.PIPE, text=True) as parent:
        pgid, sleep = map(int, parent.popen.stdout.readline().split())
        parent.popen.stdout.close()
        try:
            assert sleep in procs.live_members(pgid)
            os.kill(parent.pid, signal.SIGKILL)  # the parent only, not its group
            parent.wait(CAP)
            gone = procs.wait_until(lambda: not procs.live_members(pgid), CAP)
            assert gone, f"group {pgid} still has {procs.live_members(pgid)}"
            assert not _alive_in(sleep, pgid)
        finally:
            procs.signal_group(pgid, signal.SIGKILL)  # never outlive the test


def test_stop_ends_in_sigkill_when_sigint_is_ignored() -> None:
    with procs.Child(["sleep", "600"], sigint=signal.SIG_IGN) as c:
        assert c.stop(grace=0.5) == -signal.SIGKILL
        assert procs.live_members(c.group.pgid) == []


def test_stop_ends_with_the_sigint_status_when_it_is_heeded() -> None:
    with procs.Child(["sleep", "600"]) as c:
        assert c.stop(grace=CAP) == -signal.SIGINT


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_stopped_group_is_still_killed(how: str) -> None:
    c, sleep = _shell_with_a_background_sleep()
    with c:
        c.group.signal(signal.SIGSTOP)
        assert procs.wait_until(
            lambda: all((_state(p) or ("T",))[0] == "T" for p in (c.pid, sleep)), CAP)
        if how == "stop":
            c.stop(grace=5)
        else:
            c.kill()
        assert procs.live_members(c.group.pgid) == []
        assert not _alive_in(sleep, c.group.pgid)


def test_wait_ready_gets_the_line() -> None:
    code = "from pybpfmap import procs; import time; procs.tell_ready('armed'); time.sleep(600)"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with procs.Child([sys.executable, "-c", code], ready=True, env=env) as c:
        assert c.wait_ready(CAP) == "armed"


def test_wait_ready_without_a_line_is_not_ready() -> None:
    with procs.Child(["true"], ready=True) as c, \
            pytest.raises(procs.NotReady, match="without a line"):
        c.wait_ready(CAP)


def test_tell_ready_without_a_ready_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(procs.READY_ENV, raising=False)
    assert procs.tell_ready() is False


def test_ready_fd_variable_is_not_passed_to_other_children(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A child started without ``ready=True`` does not inherit the number of
    a ready fd it does not have."""
    monkeypatch.setenv(procs.READY_ENV, "7")
    with procs.Child(["sh", "-c", f"echo ${{{procs.READY_ENV}-unset}}"],
                     stdout=subprocess.PIPE, text=True) as c:
        out, _ = c.popen.communicate(timeout=CAP)
    assert out.strip() == "unset"


def test_preexec_fn_runs_in_the_child() -> None:
    cpu = min(os.sched_getaffinity(0))
    with procs.Child(["grep", "^Cpus_allowed_list", "/proc/self/status"],
                     stdout=subprocess.PIPE, text=True,
                     preexec_fn=lambda: os.sched_setaffinity(0, {cpu})) as c:
        out, _ = c.popen.communicate(timeout=CAP)
    assert out.split()[-1] == str(cpu)


def test_wait_until_returns_the_first_true_value() -> None:
    results = iter([None, 0, "", "found", "later"])
    assert procs.wait_until(lambda: next(results), CAP, 0.001) == "found"
    assert next(results) == "later"  # not called again once true


def test_wait_until_returns_the_last_false_value_at_the_deadline() -> None:
    produced: list[list[int]] = []

    def never() -> list[int]:
        produced.append([])
        return produced[-1]

    result = procs.wait_until(never, 0.05, 0.01)
    assert result == [] and result is produced[-1]


def test_wait_until_pauses_with_the_given_function() -> None:
    pauses: list[float] = []
    results = iter([False, False, True])
    assert procs.wait_until(lambda: next(results), CAP, 0.5, pauses.append) is True
    assert len(pauses) == 2 and all(0 <= p <= 0.5 for p in pauses)


def test_live_members_leaves_zombies_out() -> None:
    """EOF on a killed child's pipes comes from do_exit() closing its files,
    before the task is a zombie (CI once saw the child still 'R' there): a
    group is dead when no member is alive as /proc says, and a zombie is not."""
    with procs.Child(["sleep", "600"]) as c:
        assert procs.live_members(c.group.pgid) == [c.pid]
        os.kill(c.pid, signal.SIGKILL)  # not reaped: it stays a zombie
        assert procs.wait_until(lambda: (_state(c.pid) or ("Z",))[0] == "Z", CAP)
        assert procs.live_members(c.group.pgid) == []


def test_adopt_a_forked_child() -> None:
    """A child of os.fork() (its own group, made from both sides) is killed
    and reaped by waitpid."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            os.execvp("sleep", ["sleep", "600"])
        finally:
            os._exit(127)
    group = procs.adopt(pid)
    assert group.pgid == pid
    assert procs.wait_until(lambda: procs.live_members(pid) == [pid], CAP)
    with pytest.raises(subprocess.TimeoutExpired):
        group.wait(0)
    assert group.kill() == -signal.SIGKILL
    assert procs.live_members(pid) == []
    assert group.wait() == -signal.SIGKILL
