"""What runs inside the guest: the init script and the command file.

The image's stub ``/sbin/pybpfmap-init`` mounts the per-run control share and
runs :data:`INIT` from it, so this script can change without rebuilding the
image.  It talks to the host over two virtio-serial ports:

``CTL_PORT``, one line per message::

    hb <cpu> <uptime>  every second from each vCPU: one heartbeat loop pinned
                       to every online CPU, so that one CPU locked up with
                       interrupts off is noticed while the others live on
    start <release>    CMD is about to run on kernel <release>
    mark <event> <args...> uptime=<uptime>
                       CMD's progress (:func:`mark`), written by CMD itself on
                       the port's descriptor it inherits (``ENV_CTL_FD``)
    nmi <rate>         CMD asks the host for <rate> NMIs a second into every
                       vCPU (QMP inject-nmi; 0 stops): :func:`request_nmis`
    exit <status>      CMD finished with <status>; dmesg is in the results dir

``OUT_PORT`` carries CMD's standard output and nothing else (as virtme-ng
does), so a command's ``--json`` document reaches the host intact; the host
keeps it as ``stdout.txt`` in the results folder.  CMD's standard error and
the kernel's messages go to the serial console (``console.log``).
"""

from __future__ import annotations

import contextlib
import enum
import os
import shlex
from dataclasses import dataclass

from pybpfmap.errors import UsageError

CTL_PORT = "org.pybpfmap.ctl"
OUT_PORT = "org.pybpfmap.stdout"
TAG_CTL, TAG_REPO, TAG_RESULTS = "pybpfmap_ctl", "pybpfmap_repo", "pybpfmap_results"
GUEST_RESULTS = "/run/pybpfmap/results"
# Peer tools built on the host (``<cache>/peers``, :func:`pybpfmap.vm.peers.peers_dir`),
# shared read-only: the kernel's own benchmarks, built outside the image.
TAG_PEERS = "pybpfmap_peers"
GUEST_PEERS = "/run/pybpfmap/peers"
ENV_PEERS = "PYBPFMAP_PEERS"
# Exported to CMD in the guest: that it runs in pybpfmap's test VM, which
# catalog kernel it is, and how qemu runs it (TCG figures are emulation).
ENV_KERNEL = "PYBPFMAP_GUEST_KERNEL"
ENV_ACCEL = "PYBPFMAP_GUEST_ACCEL"
# Seconds between two heartbeats of one vCPU (the ``sleep`` of INIT's beat loop).
BEAT_PERIOD_S = 1
# The descriptor of CTL_PORT that CMD inherits, for its marks.
ENV_CTL_FD = "PYBPFMAP_CTL_FD"
CTL_FD = 3
# Set when the host injects NMIs on request (pybpfmap's runner; not a Vagrant box).
ENV_NMI = "PYBPFMAP_GUEST_NMI"


class Accel(enum.Enum):
    """How qemu runs the guest's CPUs."""

    KVM = "kvm"
    TCG = "tcg"              # single-threaded TCG: one host thread runs every vCPU
    TCG_MTTCG = "tcg-mttcg"  # multi-threaded TCG

    def __str__(self) -> str:
        return self.value

    @property
    def emulated(self) -> bool:
        """Figures measured under TCG are emulation figures, not hardware ones."""
        return self is not Accel.KVM

    @property
    def caveat(self) -> str | None:
        """What a run under this accelerator cannot tell, said before it boots."""
        if self is Accel.TCG_MTTCG:
            return ("multi-threaded TCG: with kprobes on the spin_unlock functions the bookworm "
                    "guest's kernel died on most boots in this project's runs, and never under "
                    "single-threaded TCG; a hang or oops here may be the emulator's, not the "
                    "kernel's (docs/vagrant.md)")
        return None

    @classmethod
    def parse(cls, text: str, param: str = "PYBPFMAP_VM_ACCEL") -> Accel:
        try:
            return cls(text)
        except ValueError:
            raise UsageError(param, f"unknown accelerator {text!r}; choose from "
                             f"{', '.join(a.value for a in cls)}") from None


def in_test_vm() -> bool:
    """True inside pybpfmap's test VM (the runner exports the catalog kernel's name)."""
    return bool(os.environ.get(ENV_KERNEL))


def guest_kernel() -> str | None:
    """The catalog name of the test-VM kernel we run on, None outside the VM."""
    return os.environ.get(ENV_KERNEL) or None


def guest_accel() -> Accel | None:
    """How qemu runs the test VM we are in (from the runner), None outside."""
    text = os.environ.get(ENV_ACCEL)
    return Accel.parse(text, ENV_ACCEL) if text else None


MARK = "pybpfmap-mark:"


def mark(event: str, *args: str) -> None:
    """Tell the host that ``event`` happened now (with the guest's uptime):
    progress the host can read even when the guest hangs a moment later and
    never prints its result.  Nothing outside the test VM.

    The record goes to the control port: a virtio-serial write kicks the
    queue inside write(2) (``__send_to_port()``), and qemu writes the buffer
    to ``ctl.log`` on that kick, so once write(2) returns nothing the guest
    does can hold it back.  A console (8250) write only fills the
    tty's buffer, which the UART's transmit interrupt drains later: a guest
    that locks up with interrupts off right after loses it (seen on 5.10: the
    ``armed`` mark of the first probe, then a pcpu_lock deadlock while loading
    the second program).  The console still gets a copy, for the human
    watching."""
    if not in_test_vm():
        return
    import sys

    with open("/proc/uptime") as f:
        up = f.read().split()[0]
    text = " ".join((event, *args, f"uptime={up}"))
    _tell_host(f"mark {text}")
    print(f"{MARK} {text}", file=sys.stderr, flush=True)


def _tell_host(line: str) -> None:
    """One line on the control port, where this process has it (a parent may
    have closed it: then nothing)."""
    fd = os.environ.get(ENV_CTL_FD)
    if fd:
        with contextlib.suppress(OSError, ValueError):  # closed (EBADF) by a parent
            os.write(int(fd), f"{line}\n".encode())


def control_fds() -> tuple[int, ...]:
    """The control port's descriptor, where this process has it open: what a
    child must be given (``pass_fds``) for its marks and requests to reach the
    host (Python's subprocess closes every other descriptor by default)."""
    fd = os.environ.get(ENV_CTL_FD)
    if not fd or not in_test_vm():
        return ()
    try:
        os.fstat(int(fd))
    except (OSError, ValueError):
        return ()
    return (int(fd),)


def nmi_unavailable() -> str | None:
    """Why the host cannot inject NMIs into this machine (None: it can)."""
    if not in_test_vm():
        return ("NMIs are injected by the host of pybpfmap's test VM (QMP inject-nmi): "
                "run with --kernel K")
    if not os.environ.get(ENV_NMI) or not os.environ.get(ENV_CTL_FD):
        return ("this guest's host does not inject NMIs on request (QMP inject-nmi is "
                "pybpfmap's own runner's; a Vagrant box has no control port)")
    if not control_fds():
        return (f"the control port (fd {os.environ[ENV_CTL_FD]}) is not open in this process: "
                "the parent that started it closed it (pass it on, as tests/helpers.py does)")
    return None


def request_nmis(rate: float) -> None:
    """Ask the host for ``rate`` NMIs a second into every vCPU from now (0: stop)."""
    _tell_host(f"nmi {rate:g}")


@dataclass(frozen=True)
class Beat:
    """``hb <cpu> <uptime>``: vCPU ``cpu`` is alive at guest uptime ``uptime``."""

    cpu: int
    uptime: float


@dataclass(frozen=True)
class Start:
    """``start <release>``: CMD is about to run on kernel ``release``."""

    release: str


@dataclass(frozen=True)
class Exit:
    """``exit <status>``: CMD finished with ``status``."""

    status: int


@dataclass(frozen=True)
class Mark:
    """``mark <event> <args...> uptime=<uptime>``: CMD's progress (:func:`mark`)."""

    event: str
    args: tuple[str, ...]
    uptime: float


@dataclass(frozen=True)
class Nmi:
    """``nmi <rate>``: CMD asks for ``rate`` NMIs a second (0: stop)."""

    rate: float


Message = Beat | Start | Exit | Mark | Nmi


def parse_ctl(line: str) -> Message | None:
    """One line of the control port (see the module doc), None for a line that
    is not one of its messages: the port is shared with CMD, so an unknown or
    torn line is never fatal."""
    word, *args = line.split() or [""]
    try:
        if word == "hb" and len(args) == 2:
            return Beat(int(args[0]), float(args[1]))
        if word == "start" and args:
            return Start(args[0])
        if word == "exit" and len(args) == 1:
            return Exit(int(args[0]))
        if word == "nmi" and len(args) == 1:
            return Nmi(float(args[0]))
        if word == "mark" and len(args) >= 2 and args[-1].startswith("uptime="):
            return Mark(args[0], tuple(args[1:-1]), float(args[-1].removeprefix("uptime=")))
    except ValueError:
        pass
    return None


def marks(ctl: str) -> list[Mark]:
    """Every :func:`mark` in the control port's log (``ctl.log``), in order."""
    return [m for m in map(parse_ctl, ctl.splitlines()) if isinstance(m, Mark)]


INIT = r"""#!/bin/sh
# pybpfmap guest init (run by /sbin/pybpfmap-init; proc, sys, dev, /run mounted).
. /run/pybpfmap/ctl/env.sh
say() { echo "pybpfmap-init: $*" >/dev/console; }
off() { sync; poweroff -f -f 2>/dev/null; echo o >/proc/sysrq-trigger; while :; do sleep 60; done; }
mount -o remount,rw / 2>/dev/null
mkdir -p /dev/pts /dev/shm /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
hostname pybpfmap-vm
ip link set lo up 2>/dev/null
modprobe -q virtio_console
port() {  # /dev node of the virtio-serial port named $1 (ports appear asynchronously)
    i=0
    while [ $i -lt 100 ]; do
        for n in /sys/class/virtio-ports/*/name; do
            d=${n%/name}
            if [ "$(cat "$n" 2>/dev/null)" = "$1" ] && [ -e "/dev/${d##*/}" ]; then
                echo "/dev/${d##*/}"
                return 0
            fi
        done
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}
ctl=$(port "$PYBPFMAP_CTL_PORT") && exec 3>"$ctl" || { say "no port $PYBPFMAP_CTL_PORT"; off; }
out=$(port "$PYBPFMAP_OUT_PORT") && exec 4>"$out" || { say "no port $PYBPFMAP_OUT_PORT"; off; }
o9p="trans=virtio,version=9p2000.L,msize=262144"
mkdir -p "$PYBPFMAP_REPO" "$PYBPFMAP_RESULTS"
mount -t 9p -o "$o9p,ro,cache=loose" "$PYBPFMAP_TAG_REPO" "$PYBPFMAP_REPO" \
    || say "cannot mount repo"
mount -t 9p -o "$o9p" "$PYBPFMAP_TAG_RESULTS" "$PYBPFMAP_RESULTS" || say "cannot mount results"
mkdir -p "$PYBPFMAP_PEERS"
mount -t 9p -o "$o9p,ro" "$PYBPFMAP_TAG_PEERS" "$PYBPFMAP_PEERS" || say "cannot mount peers"
hbs=
beat='while :; do read -r up _ </proc/uptime; echo "hb $1 $up"; sleep 1; done'
for cpu in $(seq 0 $(($(nproc --all) - 1))); do
    taskset -c "$cpu" sh -c "$beat" hb "$cpu" >&3 4>&- &
    hbs="$hbs $!"
done
# Symbols for vCPU RIPs if we hang; the host caches them per image (nokaslr: stable).
[ -n "${PYBPFMAP_DUMP_KALLSYMS:-}" ] && cat /proc/kallsyms >"$PYBPFMAP_RESULTS/.kallsyms"
echo "start $(uname -r)" >&3
cd "$PYBPFMAP_REPO" || cd /
sh /run/pybpfmap/ctl/cmd.sh </dev/null >&4 2>/dev/console 4>&-
rc=$?
exec 4>&-
dmesg >"$PYBPFMAP_RESULTS/dmesg.txt" 2>&1
sync
kill $hbs 2>/dev/null
echo "exit $rc" >&3
exec 3>&-
umount "$PYBPFMAP_RESULTS" 2>/dev/null
off
"""


def env_sh(repo: str, kernel: str, accel: str, env: dict[str, str]) -> str:
    """``env.sh`` sourced by :data:`INIT`: the share tags, paths and CMD's environment."""
    base = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "PYTHONPATH": repo,
        "PYTHONDONTWRITEBYTECODE": "1",  # the repo share is read-only
        "PYTHONUNBUFFERED": "1",         # progress lines reach the console as they happen
        "PYTEST_ADDOPTS": "-p no:cacheprovider",
        ENV_KERNEL: kernel,
        ENV_ACCEL: accel,
        "PYBPFMAP_RESULTS": GUEST_RESULTS,
        "PYBPFMAP_REPO": repo,
        "PYBPFMAP_CTL_PORT": CTL_PORT,
        ENV_CTL_FD: str(CTL_FD),
        ENV_NMI: "qmp",
        "PYBPFMAP_OUT_PORT": OUT_PORT,
        "PYBPFMAP_TAG_REPO": TAG_REPO,
        "PYBPFMAP_TAG_RESULTS": TAG_RESULTS,
        ENV_PEERS: GUEST_PEERS,
        "PYBPFMAP_TAG_PEERS": TAG_PEERS,
    }
    base.update(env)
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in base.items())


def cmd_sh(cmd: list[str]) -> str:
    """``cmd.sh``: exec CMD with its arguments quoted exactly."""
    return "exec " + " ".join(shlex.quote(a) for a in cmd) + "\n"


def is_pytest(cmd: list[str]) -> bool:
    """True for ``pytest ...`` and ``python3 -m pytest ...``."""
    if cmd and cmd[0].rsplit("/", 1)[-1] in ("pytest", "pytest-3", "py.test"):
        return True
    return len(cmd) >= 3 and cmd[0].rsplit("/", 1)[-1].startswith("python") \
        and cmd[1:3] == ["-m", "pytest"]
