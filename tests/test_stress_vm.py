"""`pybpfmap stress` from the host through the VM runner: the kprobe check in
the bookworm (6.1) and trixie (6.12) guests, and the negative control that a
guest which dies during the run is a FAIL — so a PASS means the guest lived.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def stress(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pybpfmap", "stress", "--json", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("suite", ["bookworm", "trixie"])
def test_stress_in_vm_passes(suite):
    p = stress("--kernel", suite, "--duration", "5")
    res = json.loads(p.stdout)
    assert res["vm"]["outcome"] == "passed", res["vm"]
    assert res["verdict"] == "PASS", res["reasons"]
    assert p.returncode == 0
    assert res["variant"] == "kprobe" and res["rows"]
    assert all(r["events"] > 0 for r in res["rows"])


def test_negative_control_guest_panic_is_a_fail():
    p = stress("--kernel", "bookworm", "--duration", "5", "--types", "hash/prealloc",
               "--inject", "panic")
    res = json.loads(p.stdout)
    assert p.returncode == 1
    assert res["verdict"] == "FAIL"
    assert res["vm"]["outcome"] == "panic", res["vm"]
    assert any("panic" in r for r in res["reasons"])
