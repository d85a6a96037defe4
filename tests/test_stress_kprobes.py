"""`pybpfmap stress` with kprobes on the spin_unlock functions — the real check.

Marked ``kprobes``: on a host without CONFIG_KPROBES these skip, and run inside
the test VM (``pybpfmap vm run``, or tests/test_stress_vm.py from the host).
The guest is ours alone, so cleanup is checked strictly: every BPF program
and map ID, and kprobe_events, identical before and after.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pybpfmap import kernel as kernel_probe
from pybpfmap.loader import loaded_ids
from pybpfmap.stress import leftovers, programs

pytestmark = [pytest.mark.root, pytest.mark.kprobes]


def stress(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pybpfmap", "stress", "--json", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def strict_clean():
    """Nothing at all may change: program/map IDs, bpftool's view, kprobe_events."""
    before = leftovers.snapshot()
    yield
    assert leftovers.settled(before) == {}
    after = leftovers.snapshot()
    assert after["ids"] == before["ids"]
    assert after["kprobe_events"] == before["kprobe_events"]


def test_every_unlock_row_fires_and_passes(strict_clean):
    k = kernel_probe.probe()
    p = stress("--duration", "5")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["variant"] == "kprobe"
    assert res["verdict"] == "PASS", res["reasons"]
    assert {r["probe"] for r in res["rows"]} == set(k.unlock_symbols)
    assert set(res["unavailable"]) == set(k.unlock_unavailable)
    assert "_raw_spin_unlock" in k.unlock_symbols or "_raw_spin_unlock" in res["unavailable"]
    assert len(res["rows"]) == len(k.unlock_symbols) * len(programs.MAPS)
    for row in res["rows"]:
        assert row["events"] > 0, row
        assert row["kprobe_hits"] is not None and row["kprobe_hits"] > 0, row
        assert row["kprobe_nmissed"] is not None, row
        assert row["verdict"] == "PASS", row


def test_cleanup_on_ctrl_c_with_kprobes(strict_clean, ctrl_c):
    result = ctrl_c(["stress", "--duration", "60", "--baseline", "0.3", "--types", "hash"],
                    lambda: "pybpfmap_" in (leftovers.snapshot()["kprobe_events"] or ""),
                    timeout=120, settle=1)
    assert result.returncode == 130, result.stderr


def test_loaded_ids_sees_the_program_while_attached():
    """The cleanup checks mean something: while attached, our IDs are visible."""
    k = kernel_probe.probe()
    before = loaded_ids()
    probes = [programs.Probe("kprobe", k.unlock_symbols[0])]
    with programs.loaded(probes, programs.select_maps(["hash/prealloc"])) as ld:
        during = loaded_ids()
        assert during["progs"] - before["progs"]
        assert len(during["maps"] - before["maps"]) >= len(programs.MAPS)
        assert "pybpfmap_" in Path(programs.KPROBE_EVENTS).read_text()
        assert ld.kprobe_events
