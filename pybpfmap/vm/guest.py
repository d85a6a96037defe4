"""What runs inside the guest: the init script and the command file.

The image's stub ``/sbin/pybpfmap-init`` mounts the per-run control share and
runs :data:`INIT` from it, so this script can change without rebuilding the
image.  It talks to the host over one virtio-serial port (``PORT``), one line
per message::

    hb <uptime>        every second, from a background loop (the heartbeat)
    start <release>    CMD is about to run on kernel <release>
    exit <status>      CMD finished with <status>; dmesg is in the results dir

CMD's output goes to the serial console, which the host streams.
"""

from __future__ import annotations

import shlex

PORT = "org.pybpfmap.ctl"
TAG_CTL, TAG_REPO, TAG_RESULTS = "pybpfmap_ctl", "pybpfmap_repo", "pybpfmap_results"
GUEST_RESULTS = "/run/pybpfmap/results"
IN_TEST_VM = "PYBPFMAP_IN_TEST_VM"  # exported to CMD in the guest


def in_test_vm() -> bool:
    """True inside pybpfmap's test VM (the runner exports PYBPFMAP_IN_TEST_VM=1)."""
    import os

    return os.environ.get(IN_TEST_VM) == "1"

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
port=
i=0
while [ -z "$port" ] && [ $i -lt 100 ]; do  # ports appear asynchronously after modprobe
    for n in /sys/class/virtio-ports/*/name; do
        d=${n%/name}
        [ "$(cat "$n" 2>/dev/null)" = "$PYBPFMAP_PORT" ] && [ -e "/dev/${d##*/}" ] \
            && port=/dev/${d##*/}
    done
    [ -n "$port" ] || sleep 0.1
    i=$((i + 1))
done
if [ -z "$port" ] || ! exec 3>"$port"; then say "no virtio-serial port $PYBPFMAP_PORT"; off; fi
o9p="trans=virtio,version=9p2000.L,msize=262144"
mkdir -p "$PYBPFMAP_REPO" "$PYBPFMAP_RESULTS"
mount -t 9p -o "$o9p,ro,cache=loose" "$PYBPFMAP_TAG_REPO" "$PYBPFMAP_REPO" \
    || say "cannot mount repo"
mount -t 9p -o "$o9p" "$PYBPFMAP_TAG_RESULTS" "$PYBPFMAP_RESULTS" || say "cannot mount results"
( while :; do read -r up _ </proc/uptime; echo "hb $up" >&3; sleep 1; done ) &
hb=$!
# Symbols for vCPU RIPs if we hang; the host caches them per image (nokaslr: stable).
[ -n "${PYBPFMAP_DUMP_KALLSYMS:-}" ] && cat /proc/kallsyms >"$PYBPFMAP_RESULTS/.kallsyms"
echo "start $(uname -r)" >&3
cd "$PYBPFMAP_REPO" || cd /
sh /run/pybpfmap/ctl/cmd.sh </dev/null 3>&- >/dev/console 2>&1
rc=$?
dmesg >"$PYBPFMAP_RESULTS/dmesg.txt" 2>&1
sync
kill $hb 2>/dev/null
echo "exit $rc" >&3
exec 3>&-
umount "$PYBPFMAP_RESULTS" 2>/dev/null
off
"""


def env_sh(repo: str, env: dict[str, str]) -> str:
    """``env.sh`` sourced by :data:`INIT`: the share tags, paths and CMD's environment."""
    base = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "PYTHONPATH": repo,
        "PYTHONDONTWRITEBYTECODE": "1",  # the repo share is read-only
        "PYTEST_ADDOPTS": "-p no:cacheprovider",
        "PYBPFMAP_IN_VM": "1",
        IN_TEST_VM: "1",  # see in_test_vm()
        "PYBPFMAP_RESULTS": GUEST_RESULTS,
        "PYBPFMAP_REPO": repo,
        "PYBPFMAP_PORT": PORT,
        "PYBPFMAP_TAG_REPO": TAG_REPO,
        "PYBPFMAP_TAG_RESULTS": TAG_RESULTS,
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
