"""Shared fixtures: the probed kernel, and skip markers whose reasons come from it.

Markers (registered in pyproject.toml):
  root     needs root for bpf(2)
  kprobes  needs CONFIG_KPROBES; on a host without them, run inside the test VM
  vm       boots the test VM with qemu (skipped inside the VM itself)

``tests/helpers.py`` has what test modules import (``image()``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from pybpfmap import kernel as kernel_probe
from pybpfmap.headers import ensure_headers
from pybpfmap.tracefs import ensure_tracefs
from pybpfmap.vm.guest import in_test_vm

IN_TEST_VM = in_test_vm()


@pytest.fixture(scope="session")
def kernel(pytestconfig: pytest.Config) -> kernel_probe.Kernel:
    """What this kernel can do (pybpfmap.kernel.probe), probed once per session."""
    return pytestconfig._pybpfmap_kernel  # type: ignore[attr-defined]


def _skip_reason(marker: str, k: kernel_probe.Kernel) -> str | None:
    if marker == "root" and not k.root:
        return "needs root for bpf(2): run with sudo"
    if marker == "kprobes" and not k.kprobes:
        return f"no kprobes here: {k.kprobes_reason}"
    if marker == "vm":
        if IN_TEST_VM:
            return "already inside the test VM"
        if not k.root:
            return "booting the test VM needs root (image build uses debootstrap/chroot)"
        if shutil.which("qemu-system-x86_64") is None:
            return "qemu-system-x86_64 not installed (sudo vagrant/provision.sh --host)"
        if os.environ.get("PYBPFMAP_NO_VM") == "1":
            return "PYBPFMAP_NO_VM=1: VM tests disabled for this run"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    names = {m.name for m in item.iter_markers()} & {"root", "kprobes", "vm"}
    if not names:
        return
    k = item.session.config._pybpfmap_kernel  # type: ignore[attr-defined]
    for name in sorted(names):
        reason = _skip_reason(name, k)
        if reason:
            pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() == 0:
        ensure_tracefs()
        ensure_headers()
    config._pybpfmap_kernel = kernel_probe.probe()  # type: ignore[attr-defined]


def _default_sigint() -> None:
    """A shell's background job ignores SIGINT, and Python then installs no
    KeyboardInterrupt handler: give the child the default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def ctrl_c() -> Callable[..., subprocess.CompletedProcess]:
    """``ctrl_c(args, ready, timeout)``: start ``python3 -m pybpfmap *args``,
    wait until ``ready()`` is true (it fails if that takes over ``timeout``
    seconds or the command exits first), press Ctrl-C (SIGINT), and return the
    finished process with its output.  The process never outlives the test."""

    def run(args: list[str], ready: Callable[[], bool], timeout: float = 60,
            settle: float = 0.5) -> subprocess.CompletedProcess:
        proc = subprocess.Popen([sys.executable, "-m", "pybpfmap", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_default_sigint)
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, f"not ready within {timeout} s"
                time.sleep(0.2)
            time.sleep(settle)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=timeout * 2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    return run
