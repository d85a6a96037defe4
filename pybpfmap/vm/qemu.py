"""Start qemu for one run, talk QMP to it, and make sure it never outlives us.

:func:`qemu_process` is a context manager: whatever happens inside (an
exception, Ctrl-C, a hang), qemu is killed and reaped on the way out, and it
is also killed if this Python process dies, even by SIGKILL (it is a
:class:`pybpfmap.procs.Child`).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pybpfmap import procs
from pybpfmap.guest import (
    CTL_PORT,
    OUT_PORT,
    TAG_CTL,
    TAG_PEERS,
    TAG_REPO,
    TAG_RESULTS,
    Accel,
)


@dataclass
class QemuConfig:
    """Everything one qemu invocation needs."""

    kernel: Path
    initrd: Path
    disk: Path  # the per-run overlay, never the cached base image
    ctl_dir: Path
    repo: Path
    results: Path
    run_dir: Path  # console.log, ctl.log, stdout.txt, qemu.log, qmp.sock live here
    accel: Accel = Accel.TCG
    cpus: int = 2
    memory: str = "2G"
    cmdline_extra: str = ""
    peers: Path | None = None  # host-built peer tools, shared read-only (TAG_PEERS)

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def ctl_log(self) -> Path:
        return self.run_dir / "ctl.log"

    @property
    def stdout_log(self) -> Path:
        """CMD's standard output (the guest's OUT_PORT)."""
        return self.run_dir / "stdout.txt"

    @property
    def qemu_log(self) -> Path:
        return self.run_dir / "qemu.log"

    @property
    def qmp_sock(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def nmi_sock(self) -> Path:
        """A second QMP monitor, the NMI injector's (:mod:`pybpfmap.vm.nmi`)."""
        return self.run_dir / "nmi.sock"


def kernel_cmdline(extra: str = "") -> str:
    # nokaslr: System.map addresses are the real ones, so vCPU RIPs symbolize.
    # panic=-1 with -no-reboot: a panicking guest makes qemu exit at once.
    return ("console=ttyS0,115200 root=/dev/vda rw rootfstype=ext4 init=/sbin/pybpfmap-init "
            "panic=-1 nokaslr quiet loglevel=4 mitigations=off tsc=reliable "
            f"8250.nr_uarts=1 {extra}").strip()


def accel_args(accel: Accel) -> list[str]:
    if accel is Accel.KVM:
        return ["-accel", "kvm", "-cpu", "host"]
    if accel is Accel.TCG_MTTCG:
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]
    # Single-threaded TCG: one host thread runs all vCPUs round-robin.  Slower
    # for parallel work but immune to the multi-threaded-TCG hang seen here.
    return ["-accel", "tcg,thread=single", "-cpu", "max"]


def qemu_argv(c: QemuConfig) -> list[str]:
    """The qemu command line for ``c`` (also shown in the run's results)."""
    def virtfs(tag: str, path: Path, ro: bool) -> list[str]:
        opts = f"local,path={path},mount_tag={tag},security_model=none"
        return ["-virtfs", opts + (",readonly=on" if ro else "")]

    return [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
        "-machine", "pc", *accel_args(c.accel), "-smp", str(c.cpus), "-m", c.memory,
        "-no-reboot",
        "-kernel", str(c.kernel), "-initrd", str(c.initrd),
        "-append", kernel_cmdline(c.cmdline_extra),
        "-drive", f"file={c.disk},if=virtio,format=qcow2,cache=unsafe",
        *virtfs(TAG_CTL, c.ctl_dir, True), *virtfs(TAG_REPO, c.repo, True),
        *virtfs(TAG_RESULTS, c.results, False),
        *(virtfs(TAG_PEERS, c.peers, True) if c.peers else []),
        "-chardev", f"file,id=con,path={c.console_log}", "-serial", "chardev:con",
        "-device", "virtio-serial-pci",
        "-chardev", f"file,id=ctl,path={c.ctl_log}",
        "-device", f"virtserialport,chardev=ctl,name={CTL_PORT}",
        "-chardev", f"file,id=out,path={c.stdout_log}",
        "-device", f"virtserialport,chardev=out,name={OUT_PORT}",
        "-qmp", f"unix:{c.qmp_sock},server=on,wait=off",
        "-chardev", f"socket,id=nmimon,path={c.nmi_sock},server=on,wait=off",
        "-mon", "chardev=nmimon,mode=control",
    ]


@contextlib.contextmanager
def qemu_process(c: QemuConfig) -> Iterator[procs.Child]:
    """Run qemu for ``c`` (``pid``, ``poll()``, ``returncode``); on exit from
    the block it is killed (SIGKILL: there is nothing to shut down cleanly,
    SIGCONT first if it was stopped) and reaped."""
    for f in (c.console_log, c.ctl_log, c.stdout_log):
        f.write_bytes(b"")
    with open(c.qemu_log, "wb") as log:
        proc = procs.Child(qemu_argv(c), stdin=subprocess.DEVNULL, stdout=log,
                           stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.kill()


class QmpTimeout(Exception):
    """qemu did not answer its monitor in time (qemu itself is stuck)."""


def qmp_hmp(sock: Path, command: str, timeout: float = 5.0, cpu_index: int | None = None
            ) -> str:
    """Run an HMP ``command`` through QMP's human-monitor-command (on vCPU
    ``cpu_index`` for commands such as ``x`` that read through a CPU's page
    tables); its text output."""
    deadline = time.monotonic() + timeout
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(sock))
            f = s.makefile("rwb")

            def call(msg: dict | None) -> dict:
                if msg is not None:
                    f.write(json.dumps(msg).encode() + b"\n")
                    f.flush()
                while time.monotonic() < deadline:
                    line = f.readline()
                    if not line:
                        raise QmpTimeout("monitor closed the connection")
                    reply = json.loads(line)
                    if "return" in reply or "error" in reply or "QMP" in reply:
                        return reply
                raise QmpTimeout(f"no answer in {timeout:.0f} s")

            call(None)  # greeting
            call({"execute": "qmp_capabilities"})
            args: dict = {"command-line": command}
            if cpu_index is not None:
                args["cpu-index"] = cpu_index
            reply = call({"execute": "human-monitor-command", "arguments": args})
        except TimeoutError as e:
            raise QmpTimeout(f"no answer in {timeout:.0f} s") from e
        except OSError as e:
            raise QmpTimeout(f"monitor unreachable: {e}") from e
    finally:
        s.close()
    if "error" in reply:
        return f"(HMP error: {reply['error'].get('desc')})"
    return reply["return"]
