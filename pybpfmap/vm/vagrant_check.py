"""The policy half of ``vagrant/ci-up.sh``: boot the box, run the guest tests,
judge them, tell a dead guest from a failed test, boot again after a death.

``ci-up.sh`` keeps the plumbing (a network namespace with its own libvirtd,
``vagrant box add``, the teardown trap) and runs, inside that set-up::

    python3 -m pybpfmap vm box-check --netns NS --domain DOMAIN --work DIR

Every ``vagrant`` call runs as ``ip netns exec NS vagrant ...`` under
:mod:`pybpfmap.procs` (its own process group: at a time limit the whole group
goes, vagrant's ssh included, so no orphan holds a pipe open).  The guest runs
``sudo pytest -m "guest or kprobes"`` (the selection of ``pybpfmap vm test``)
with a time limit of its own; junit comes back and is judged by
:func:`pybpfmap.vm.suite.junit_problem`, as ``vm test``'s are.  A watcher
connects to the guest's sshd every ``WATCH_PERIOD`` s: silent for
``DEAD_AFTER`` s, its kernel is taken for dead, the ssh session is ended, the
vCPUs are sampled through libvirt
(``pybpfmap vm evidence``) and the console's end is shown.  A failed test
fails the check at once; a guest that died gets another boot, up to
``--boots``, each death said in a WARNING line.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from pybpfmap import junit, procs
from pybpfmap.vm.catalog import CatalogKernel
from pybpfmap.vm.suite import GUEST_TESTS, junit_problem

WATCH_PERIOD = 10.0
DEAD_AFTER = 90.0
UP_LIMIT = 1200.0
GUEST_JUNIT = "/tmp/pybpfmap-guest.xml"
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"vagrant-check [{time.monotonic() - T0:4.0f}s] {msg}", flush=True)


class Check:
    """One Vagrant check in namespace ``netns``, files in ``work``."""

    def __init__(self, netns: str, domain: str, kernel: CatalogKernel, work: Path,
                 limit: float):
        self.netns, self.domain, self.kernel = netns, domain, kernel
        self.work, self.limit = work, limit
        self.console = work / "console.log"

    def in_ns(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv: list[str], limit: float, log: Path | None = None,
            stop: threading.Event | None = None) -> int | None:
        """Run ``argv`` in its own group, its output stamped on our stdout (and
        in ``log``); stopped at ``limit`` s or when ``stop`` is set.  Its exit
        status, or None when it was stopped."""
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(log, "w")) if log else None
            c = stack.enter_context(procs.Child(argv, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT))
            pump = threading.Thread(target=self._pump, args=(c.popen.stdout, out),
                                    daemon=True)
            pump.start()
            ended = procs.wait_until(lambda: c.poll() is not None
                                     or (stop is not None and stop.is_set()), limit, 0.5)
            if not ended or c.poll() is None:
                say(f"stopping {' '.join(argv[4:6])}: "
                    + ("the guest is dead" if stop and stop.is_set()
                       else f"not done within {limit:.0f} s"))
                c.stop(grace=20)
                pump.join(5)
                return None
            pump.join(30)
            return c.returncode

    @staticmethod
    def _pump(pipe, out) -> None:
        for raw in iter(pipe.readline, b""):
            # Vagrant's progress bars: \r-separated, with erase-line codes.
            for line in raw.decode(errors="replace").replace("\x1b[K", "").split("\r"):
                line = line.rstrip()
                if line and "Progress: " not in line:
                    print(f"[{time.monotonic() - T0:4.0f}s] {line}", flush=True)
                    if out:
                        print(line, file=out, flush=True)

    def capture(self, argv: list[str], limit: float = 60,
                stderr: bool = True) -> tuple[int | None, str]:
        """``argv``'s exit status and output, stderr included unless ``stderr`` is
        false (None when stopped at ``limit``)."""
        with procs.Child(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT if stderr else subprocess.DEVNULL) as c:
            try:
                out, _ = c.popen.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                c.kill()
                return None, ""
            return c.returncode, out.decode(errors="replace")

    def vagrant(self, *args: str) -> list[str]:
        return self.in_ns("vagrant", *args)

    def up(self, boot: int) -> bool:
        status = self.run(self.vagrant("up", "--provider=libvirt"), UP_LIMIT,
                          self.work / f"up{boot}.log")
        if status != 0:
            say(f"vagrant up failed (exit status {status})")
        return status == 0

    def guest_ip(self) -> str | None:
        _, out = self.capture(self.vagrant("ssh-config"))
        return next((line.split()[1] for line in out.splitlines()
                     if line.strip().startswith("HostName ")), None)

    def sshd_answers(self, ip: str) -> bool:
        probe = ("import socket, sys; socket.create_connection((sys.argv[1], 22), 5)")
        status, _ = self.capture(self.in_ns(sys.executable, "-c", probe, ip), 20)
        return status == 0

    def watch(self, ip: str, done: threading.Event, dead: threading.Event) -> None:
        """Set ``dead`` once the guest's sshd has not answered for DEAD_AFTER s."""
        silent_since = None
        while not done.wait(WATCH_PERIOD if silent_since is None else 0):
            if self.sshd_answers(ip):
                silent_since = None
            else:
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since >= DEAD_AFTER:
                    say(f"the guest has not accepted a TCP connection for {DEAD_AFTER:.0f} s:"
                        " its kernel is taken for dead")
                    dead.set()
                    return
                done.wait(WATCH_PERIOD)

    def qemu_accel(self) -> None:
        """How the guest's qemu was really started (the Vagrantfile's choice)."""
        for entry in Path("/proc").iterdir():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and b"qemu-system" in args[0] and any(self.domain.encode() in a
                                                          for a in args):
                accel = next((args[i + 1].decode() for i, a in enumerate(args[:-1])
                              if a == b"-accel"), "no -accel option")
                say(f"the guest's qemu runs with -accel {accel}")
                return
        say("the guest's qemu is not running?")

    def tests(self, boot: int) -> str:
        """Run the guest tests once: "passed", "failed" or "dead"."""
        self.qemu_accel()
        ip = self.guest_ip()
        done, dead = threading.Event(), threading.Event()
        watcher = threading.Thread(target=self.watch, args=(ip, done, dead), daemon=True)
        if ip:
            watcher.start()
        else:
            say("no guest address from vagrant ssh-config: not watching its sshd")
        if os.environ.get("PYBPFMAP_CI_INJECT") == "freeze" and boot == 1:
            # Negative control: the first boot's vCPUs are paused 60 s into the
            # tests, as a dead kernel would stop; the check must see it.
            threading.Timer(60, self.freeze).start()
        limit = int(self.limit)
        cmd = (f"cd /vagrant && sudo timeout -k 10 {limit} python3 -m pytest -v -m "
               f"'{GUEST_TESTS}' -p no:cacheprovider --junitxml={GUEST_JUNIT}")
        status = self.run(self.vagrant("ssh", "-c", cmd), limit + 60,
                          self.work / f"pytest{boot}.log", stop=dead)
        done.set()
        if watcher.is_alive():
            watcher.join()
        if status == 0 or (status is not None and not dead.is_set()):
            fetched, xml = self.capture(self.vagrant("ssh", "-c", f"cat {GUEST_JUNIT}"),
                                        stderr=False)
            if fetched == 0:
                try:
                    j = junit.parse(xml)
                except ValueError as e:
                    say(f"FAIL: the guest's junit is unreadable: {e}")
                    return "failed"
                for c in j.cases:
                    say(f"{c.kind} {c.name}: {c.message}")
                say(f"guest tests: {j.counts()}")
                problem = junit_problem(j, status)
                if problem is None:
                    return "passed"
                say(f"FAIL: {problem}")
                return "failed"
        if status is None and not dead.is_set():
            say(f"the guest's pytest did not finish within {limit} s")
        return self.post_mortem(dead.is_set())

    def freeze(self) -> None:
        say("PYBPFMAP_CI_INJECT=freeze: pausing the guest's vCPUs")
        self.capture(["virsh", "-q", "-c", "qemu:///system", "suspend", self.domain])

    def post_mortem(self, dead: bool) -> str:
        """Is the guest alive (then a test failed or hung) or not (its kernel)?"""
        if not dead:
            status, out = self.capture(self.vagrant("ssh", "-c", "uptime; sudo dmesg | tail "
                                                    "-n 25"), 60)
            if status == 0:
                say("the guest still answers over ssh; its uptime and last kernel messages:")
                print(out, flush=True)
                return "failed"
        say("the guest does not answer; where its vCPUs are (pybpfmap vm evidence):")
        _, out = self.capture([sys.executable, "-m", "pybpfmap", "vm", "evidence", "--kernel",
                               self.kernel.name, "--libvirt", self.domain], 120)
        print(out, flush=True)
        say(f"last lines of the guest's serial console ({self.console}):")
        try:
            tail = self.console.read_text(errors="replace").replace("\r", "")
            print("\n".join(tail.splitlines()[-40:]), flush=True)
        except OSError as e:
            say(f"no console log: {e.strerror}")
        return "dead"

    def main(self, boots: int) -> int:
        for boot in range(1, boots + 1):
            deaths = boot - 1
            if boot > 1:
                self.run(self.vagrant("destroy", "-f"), 300)
            say(f"vagrant up (boot {boot} of at most {boots})")
            start = time.monotonic()
            if not self.up(boot):
                return 1
            say(f"vagrant up: {time.monotonic() - start:.0f} s")
            say(f"sudo pytest -m '{GUEST_TESTS}' in the guest (boot {boot})")
            start = time.monotonic()
            result = self.tests(boot)
            say(f"the guest tests: {result} after {time.monotonic() - start:.0f} s")
            if result == "passed":
                if deaths:
                    say(f"WARNING: the guest tests passed on boot {boot}; the guest's kernel "
                        f"died on {deaths} boot(s) before")
                self.run(self.vagrant("destroy", "-f"), 300)
                say("OK")
                return 0
            if result == "failed":
                return 1
            say(f"WARNING: the guest's kernel died under the guest tests on boot {boot} "
                "(evidence above)")
        say(f"FAIL: the guest's kernel died on all {boots} boots")
        return 1
