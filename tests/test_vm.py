"""The test VM for real: each test boots the cached default image once (~15 s under TCG).

Skipped (with the reason) inside the VM itself, without root or qemu, or when
the image is not built yet (`pybpfmap vm build`; CI builds it first).
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from pathlib import Path

import pytest

from pybpfmap import procs
from pybpfmap.vm import catalog
from pybpfmap.vm.outcome import Outcome
from pybpfmap.vm.run import run_in_vm
from tests.helpers import image

pytestmark = pytest.mark.vm  # the vm skip checks root too


@pytest.fixture
def vm():
    """run_in_vm on the default catalog kernel; never builds the image."""
    image(catalog.DEFAULT)
    return functools.partial(run_in_vm, kernel=catalog.get(catalog.DEFAULT), build=False)


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
    r = vm(["sh", "-c", 'uname -r > "$PYBPFMAP_RESULTS/uname.txt"; echo out; echo err >&2; '
                        'exit 7'], results_dir=tmp_path, hang_timeout=60, timeout=300)
    assert (r.outcome, r.exit_code, r.status) == (Outcome.FAILED, 7, 7), r.evidence_text()
    assert r.kernel_release and catalog.get(catalog.DEFAULT).matches_release(r.kernel_release)
    assert (tmp_path / "uname.txt").read_text().strip() == r.kernel_release
    assert r.stdout() == "out\n"  # CMD's stdout on its own port, stderr on the console
    assert "err" in r.console_path.read_text()
    assert r.dmesg_path and "Linux version" in r.dmesg_path.read_text()
    assert not _qemu_pids_for(tmp_path)


def test_panic_is_reported_as_panic(vm, tmp_path):
    r = vm(["sh", "-c", "echo c > /proc/sysrq-trigger"], results_dir=tmp_path, timeout=300)
    assert (r.outcome, r.status) == (Outcome.PANIC, 122)
    assert "sysrq triggered crash" in r.message
    assert not _qemu_pids_for(tmp_path)


def test_frozen_qemu_is_hung_not_timed_out(vm, tmp_path):
    """qemu itself stopped (SIGSTOP): no heartbeat arrives, the run is a hang
    (123) long before its 300 s timeout (124), and the evidence says that qemu,
    not the guest, no longer answers."""
    started = threading.Event()

    def freeze() -> None:
        procs.wait_until(lambda: (tmp_path / "started").exists(), 200, 0.2)
        for pid in _qemu_pids_for(tmp_path):
            os.kill(pid, signal.SIGSTOP)
            started.set()

    t = threading.Thread(target=freeze, daemon=True)
    t.start()
    r = vm(["sh", "-c", 'touch "$PYBPFMAP_RESULTS/started"; sleep 300'], results_dir=tmp_path,
           hang_timeout=5.0, timeout=300)
    t.join(5)
    assert started.is_set(), "the guest never started CMD"
    assert (r.outcome, r.status) == (Outcome.HUNG, 123)
    assert not r.evidence.qemu_answers and r.evidence.qemu_threads
    assert not _qemu_pids_for(tmp_path)


# Stop the heartbeat loop pinned to the given vCPUs (children of init; their
# last argument is the CPU): qemu stays healthy, so the runner must dump and
# symbolize every vCPU.
STOP_BEATS = ('for p in $(pgrep -f "echo \\"hb"); do c=$(tr "\\0" "\\n" </proc/$p/cmdline | '
              'tail -n 1); case " $CPUS " in *" $c "*) kill -STOP "$p";; esac; done; sleep 300')


def test_stuck_guest_reports_every_vcpu(vm, tmp_path):
    r = vm(["env", "CPUS=0 1", "sh", "-c", STOP_BEATS], results_dir=tmp_path, cpus=2,
           hang_timeout=5, timeout=300)
    assert (r.outcome, r.status) == (Outcome.HUNG, 123)
    assert "no heartbeat from any vCPU" in r.message
    assert [v.cpu for v in r.evidence.vcpus] == [0, 1] and r.evidence.qemu_answers
    assert "CPU#0 RIP=" in r.evidence_text() and "CPU#1 RIP=" in r.evidence_text()
    assert not _qemu_pids_for(tmp_path)


def test_one_stuck_cpu_is_seen_while_the_other_lives(vm, tmp_path):
    """The per-vCPU heartbeat: one CPU silent while the other beats is a hang
    (123) within hang_timeout, not the run's timeout (124) minutes later."""
    r = vm(["env", "CPUS=1", "sh", "-c", STOP_BEATS], results_dir=tmp_path, cpus=2,
           hang_timeout=5, timeout=300)
    assert (r.outcome, r.status) == (Outcome.HUNG, 123)
    assert "CPU#1 stuck" in r.message and "CPU#0 went on" in r.message
    assert not _qemu_pids_for(tmp_path)
