"""The test VM for real: each test boots the cached image once (~15 s under TCG).

Skipped (with the reason) inside the VM itself, without root or qemu, or when
the image is not built yet (`pybpfmap vm build`; CI builds it first).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm


def _skip_reason() -> str | None:
    from pybpfmap.vm.guest import in_test_vm

    if in_test_vm():
        return "already inside the test VM"
    if os.geteuid() != 0:
        return "needs root (image cache in /var/cache/pybpfmap)"
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 not installed (vagrant/provision.sh --host)"
    from pybpfmap.vm import find_image

    if find_image("bookworm") is None:
        return "no bookworm image built for the current inputs: run `pybpfmap vm build`"
    return None


@pytest.fixture(scope="module")
def vm():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from pybpfmap.vm import run_in_vm

    return run_in_vm


def _qemu_pids_for(results: Path) -> list[int]:
    """qemu processes sharing ``results`` (found by their -virtfs path)."""
    pids = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and \
                any(str(results).encode() in a for a in argv):
            pids.append(int(d.name))
    return pids


def test_exit_status_results_and_dmesg_come_back(vm, tmp_path):
    r = vm(["sh", "-c", 'uname -r > "$PYBPFMAP_RESULTS/uname.txt"; exit 7'],
           results_dir=tmp_path, hang_timeout=60, timeout=300, stream=False)
    assert (r.outcome, r.exit_code, r.status) == ("failed", 7, 7), r.evidence
    assert r.kernel_release and r.kernel_release.startswith("6.1.")
    assert (tmp_path / "uname.txt").read_text().strip() == r.kernel_release
    assert r.dmesg_path and "Linux version" in r.dmesg_path.read_text()
    assert r.accel in ("kvm", "tcg", "tcg-mttcg")
    assert not _qemu_pids_for(tmp_path)


def test_panic_is_reported_as_panic(vm, tmp_path):
    r = vm(["sh", "-c", "echo c > /proc/sysrq-trigger"], results_dir=tmp_path,
           timeout=300, stream=False)
    assert (r.outcome, r.status) == ("panic", 122)
    assert "sysrq triggered crash" in r.evidence
    assert not _qemu_pids_for(tmp_path)


def test_frozen_qemu_is_hung_within_hang_timeout(vm, tmp_path):
    hang_timeout, margin = 5.0, 10.0
    stopped: dict[str, float] = {}

    def freeze() -> None:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and not (tmp_path / "started").exists():
            time.sleep(0.2)
        for pid in _qemu_pids_for(tmp_path):
            os.kill(pid, signal.SIGSTOP)
            stopped["at"] = time.monotonic()

    t = threading.Thread(target=freeze, daemon=True)
    t.start()
    r = vm(["sh", "-c", 'touch "$PYBPFMAP_RESULTS/started"; sleep 300'], results_dir=tmp_path,
           hang_timeout=hang_timeout, timeout=300, stream=False)
    done = time.monotonic()
    t.join(5)
    assert "at" in stopped, "the guest never started CMD"
    assert (r.outcome, r.status) == ("hung", 123)
    assert done - stopped["at"] <= hang_timeout + margin
    assert "qemu does not answer its monitor" in r.evidence
    assert not _qemu_pids_for(tmp_path)


def test_stuck_guest_reports_every_vcpu(vm, tmp_path):
    # Stop the guest's heartbeat loop (a child of init) but not CMD itself:
    # qemu stays healthy, so the runner must dump and symbolize the vCPUs.
    script = 'for p in $(pgrep -P 1 -x sh); do [ "$p" = $$ ] || kill -STOP "$p"; done; sleep 300'
    r = vm(["sh", "-c", script], results_dir=tmp_path, cpus=2, hang_timeout=5, timeout=300,
           stream=False)
    assert (r.outcome, r.status) == ("hung", 123)
    assert "CPU#0 RIP=" in r.evidence and "CPU#1 RIP=" in r.evidence
    assert not _qemu_pids_for(tmp_path)
