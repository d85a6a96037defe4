"""The Vagrant check's process handling, without Vagrant: every command runs
in its own group, a time limit or a dead guest stops the whole group (vagrant's
ssh included), and the output is kept in its log."""

from __future__ import annotations

import threading
from pathlib import Path

from pybpfmap import procs
from pybpfmap.vm import catalog
from pybpfmap.vm.vagrant_check import Check


def _check(tmp_path: Path) -> Check:
    return Check("no-such-netns", "no-such-domain", catalog.get("bookworm"), tmp_path, 900)


def test_a_command_runs_and_its_output_is_logged(tmp_path):
    status = _check(tmp_path).run(["sh", "-c", "echo one; printf 'two\\rthree\\n'; exit 3"],
                                  60, tmp_path / "log")
    assert status == 3
    assert (tmp_path / "log").read_text().split() == ["one", "two", "three"]


def _survivors(tmp_path: Path) -> list[int]:
    pid = int((tmp_path / "bg.pid").read_text())
    return [pid] if Path(f"/proc/{pid}").exists() and \
        Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in "ZX" else []


def test_the_time_limit_stops_the_whole_group(tmp_path):
    # the background child stands for vagrant's ssh, which held CI's pipe open once
    argv = ["sh", "-c", f"sleep 600 & echo $! > {tmp_path}/bg.pid; wait"]
    assert _check(tmp_path).run(argv, 2) is None
    assert procs.wait_until(lambda: not _survivors(tmp_path), 30), "a member survived"


def test_a_dead_guest_stops_the_session(tmp_path):
    dead = threading.Event()
    threading.Timer(1, dead.set).start()
    argv = ["sh", "-c", f"sleep 600 & echo $! > {tmp_path}/bg.pid; wait"]
    assert _check(tmp_path).run(argv, 600, stop=dead) is None
    assert procs.wait_until(lambda: not _survivors(tmp_path), 30), "a member survived"
