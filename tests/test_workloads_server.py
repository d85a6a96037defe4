"""Workload windows served by a child process (bcc-compare's workload), and its
client: set up once, a window per request, nothing left running after."""

from __future__ import annotations

import json
import sys

import pytest

from pybpfmap import procs
from pybpfmap.errors import EnvironmentProblem
from pybpfmap.workloads import WORKLOADS
from pybpfmap.workloads.server import WorkloadServer
from tests.helpers import cmd


def test_server_serves_windows_then_goes() -> None:
    with WorkloadServer("getpid", 60) as server:
        pid = server.proc.pid
        first, second = server.window(0.05), server.window(0.05)
        assert all(ops > 0 and elapsed >= 0.05 for ops, elapsed in (first, second))
    assert not procs.live_members(pid)


def test_unknown_workload_fails_with_the_servers_words() -> None:
    with pytest.raises(EnvironmentProblem, match="workload nosuch: failed: KeyError"):
        WorkloadServer("nosuch", 60)


def test_one_window_by_hand() -> None:
    out = json.loads(cmd([sys.executable, "-m", "pybpfmap.workloads", "open", "0.05"]).stdout)
    assert out["workload"] == "open" and out["ops"] > 0 and out["elapsed"] >= 0.05
    assert set(WORKLOADS) >= {"wakeups", "getpid", "open", "tcp_connect", "block_io",
                              "process", "softirq", "irq"}
