"""What test modules share that is not a fixture: running commands (in the
manner of the kernel's tools/testing/selftests/net/lib/py ``cmd``), bpftool,
and the test-VM images."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import pytest

from pybpfmap import guest

REPO = Path(__file__).resolve().parent.parent


class CommandFailed(AssertionError):
    """A command exited with a status the test did not expect: its argv,
    status, stdout and stderr are in the message."""

    def __init__(self, proc: subprocess.CompletedProcess, expect: Collection[int]):
        self.proc = proc
        want = " or ".join(str(s) for s in sorted(expect))
        super().__init__(f"command failed: exit status {proc.returncode} (expected {want})\n"
                         f"argv: {proc.args}\n"
                         f"STDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")


def cmd(argv: Sequence[str], *, expect: int | Collection[int] = 0, check: bool = True,
        timeout: float = 600, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``argv`` (in the repository, output captured as text); with ``check``,
    raise :class:`CommandFailed` unless it exits with ``expect`` (a status or a set).
    In the test VM it keeps the control port, so that the command's progress marks
    and NMI requests reach the host."""
    proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, pass_fds=guest.control_fds())
    statuses = {expect} if isinstance(expect, int) else set(expect)
    if check and proc.returncode not in statuses:
        raise CommandFailed(proc, statuses)
    return proc


def pybpfmap_argv(*args: str) -> list[str]:
    """``python3 -m pybpfmap ARGS`` with this interpreter."""
    return [sys.executable, "-m", "pybpfmap", *args]


def bpftool(*args: str) -> Any:
    """``bpftool -j ARGS``, its JSON parsed (None when it printed nothing); skips
    when bpftool is not installed."""
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool not installed (sudo vagrant/provision.sh --host)")
    out = cmd(["bpftool", "-j", *args], timeout=60).stdout
    return json.loads(out) if out.strip() else None


def kernel_config() -> dict[str, str] | None:
    """The running kernel's build configuration (``CONFIG_X`` -> value, from
    /proc/config.gz or /boot/config-<release>), or None when neither exists."""
    for path, opener in (("/proc/config.gz", gzip.open),
                         (f"/boot/config-{os.uname().release}", open)):
        try:
            with opener(path, "rt") as f:
                text = f.read()
        except OSError:
            continue
        return dict(line.split("=", 1) for line in text.splitlines()
                    if line.startswith("CONFIG_") and "=" in line)
    return None


def kprobe_refusals(funcs: Sequence[str]) -> dict[str, str | None]:
    """For each kernel function: None if BCC attached a kprobe to it (detached
    at once), else BCC's error.  Ground truth about kprobes that shares no
    code with pybpfmap's own (tracefs kprobe_events)."""
    from bcc import BPF

    b = BPF(text=b"int probe(void *ctx) { return 0; }")
    out: dict[str, str | None] = {}
    try:
        for func in funcs:
            try:
                b.attach_kprobe(event=func.encode(), fn_name=b"probe")
            except Exception as e:  # bcc raises bare Exception
                out[func] = str(e)
            else:
                b.detach_kprobe(event=func.encode())
                out[func] = None
    finally:
        b.cleanup()
    return out


def json_out(proc: subprocess.CompletedProcess) -> Any:
    """A command's standard output as JSON (failing with its stderr when it
    printed nothing)."""
    assert proc.stdout.strip(), f"{proc.args} printed nothing; stderr:\n{proc.stderr}"
    return json.loads(proc.stdout)


def image(name: str):
    """The cached image of catalog kernel ``name`` (for VM tests), or skip saying
    why there is none."""
    from pybpfmap.vm import catalog
    from pybpfmap.vm.image import find_image

    found = find_image(catalog.get(name))
    if found is None:
        pytest.skip(f"no {name} image built for the current inputs: run `pybpfmap vm build "
                    f"--kernel {name}` (CI builds bookworm, bullseye and trixie-backports)")
    return found
