"""Shared fixtures: the probed kernel, and skip markers whose reasons come from it.

Markers (registered in pyproject.toml):
  root     needs root for bpf(2)
  kprobes  needs CONFIG_KPROBES; on a host without them, run inside the test VM
  vm       boots the test VM with qemu (skipped inside the VM itself): the
           tests that watch a guest from outside
  guest    about the running kernel, no outside observer: ``pybpfmap vm test``
           runs the ``guest or kprobes`` tests inside each test VM

Fixtures: ``kernel`` (the one probe of the running kernel, which every
marker's skip reason comes from) and ``pybpfmap`` (runs the command line and
fails with its argv, status and output, like the selftests' ``cmd``).
``tests/helpers.py`` has what test modules import (``cmd()``, ``bpftool()``,
``image()``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection

import pytest

from pybpfmap import kernel as kernel_probe
from pybpfmap import procs
from pybpfmap.guest import in_test_vm
from pybpfmap.headers import ensure_headers
from pybpfmap.tracefs import ensure_tracefs
from tests.helpers import cmd, pybpfmap_argv

IN_TEST_VM = in_test_vm()


def pytest_configure(config: pytest.Config) -> None:
    """As root, mount tracefs and link headers as the commands do, before
    collection: test modules look at tracefs when imported (which tracepoints
    exist), and the probe sees the headers BCC will use."""
    if os.geteuid() == 0:
        ensure_tracefs()
        ensure_headers()


@pytest.fixture(scope="session")
def kernel() -> kernel_probe.Kernel:
    """What this kernel can do (pybpfmap.kernel.probe), probed once per session:
    the one probe every marker's skip reason comes from."""
    return kernel_probe.probe()


def _skip_reason(marker: str, k: kernel_probe.Kernel) -> str | None:
    """Why a test marked ``marker`` cannot run on kernel ``k`` (None: it can)."""
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


@pytest.fixture(autouse=True)
def _marker_skips(request: pytest.FixtureRequest, kernel: kernel_probe.Kernel) -> None:
    """Skip a test marked root, kprobes or vm that cannot run here, with the reason."""
    names = {m.name for m in request.node.iter_markers()} & {"root", "kprobes", "vm"}
    for name in sorted(names):
        reason = _skip_reason(name, kernel)
        if reason:
            pytest.skip(reason)


@pytest.fixture
def pybpfmap() -> Callable[..., subprocess.CompletedProcess]:
    """``pybpfmap(*args, expect=0, check=True, timeout=600)``: run ``python3 -m
    pybpfmap *args`` in the repository and return the finished process; with
    ``check``, fail with its argv, status, stdout and stderr unless it exits
    with ``expect`` (a status or a set of them)."""

    def run(*args: str, expect: int | Collection[int] = 0, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:
        return cmd(pybpfmap_argv(*args), expect=expect, check=check, timeout=timeout)

    return run


@pytest.fixture
def ctrl_c() -> Callable[..., subprocess.CompletedProcess]:
    """``ctrl_c(args, timeout=60, at_ready=None)``: start ``python3 -m pybpfmap
    *args`` as a :class:`pybpfmap.procs.Child` with a ready fd, wait until the
    command says it is armed (``procs.tell_ready()``, once its probes are
    attached; it fails if that takes over ``timeout`` seconds or the command
    exits first), call ``at_ready()``, press Ctrl-C (SIGINT to its process
    group, as a terminal does), and return the finished process with its
    output.  Nothing of it outlives the test."""

    def run(args: list[str], timeout: float = 60,
            at_ready: Callable[[], object] | None = None) -> subprocess.CompletedProcess:
        with tempfile.TemporaryFile("w+", errors="replace") as out, \
                tempfile.TemporaryFile("w+", errors="replace") as err, \
                procs.Child([sys.executable, "-m", "pybpfmap", *args], ready=True,
                            stdout=out, stderr=err) as child:
            try:
                child.wait_ready(timeout)
            except procs.NotReady as e:
                child.kill()
                out.seek(0)
                err.seek(0)
                pytest.fail(f"{e}\nstdout:\n{out.read()}\nstderr:\n{err.read()}")
            if at_ready is not None:
                at_ready()
            status = child.stop(grace=timeout * 2)  # SIGKILL only if it ignores Ctrl-C
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(child.argv, status, out.read(), err.read())

    return run
