"""Negative controls (``--inject``): make a stress row fail the way a real
problem would, to show that the check would see it.

Each :class:`Injection` is a context manager factory wrapped around a row's
stressed window; ``test_vm_only`` ones would take this machine down with them.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from pybpfmap import procs, splats
from pybpfmap.registry import Registry
from pybpfmap.stress import watch


@dataclass(frozen=True)
class Injection:
    """One negative control, named as ``--inject`` and the records name it."""

    name: str
    test_vm_only: bool = False   # it takes the kernel down: never outside the test VM

    def during(self, heartbeat_limit: float) -> AbstractContextManager[None]:
        """The failure, from entry to exit (a heartbeat later than
        ``heartbeat_limit`` is what makes a row unresponsive)."""
        raise NotImplementedError


class Splat(Injection):
    """A WARN line of our own in the kernel log: the splat check must fail the row."""

    @contextmanager
    def during(self, heartbeat_limit: float) -> Iterator[None]:
        watch.inject_kmsg(splats.negative_control_line(os.getpid()))
        yield


class Stall(Injection):
    """This whole process (heartbeat thread included) stopped, from a helper
    process, for longer than the heartbeat limit."""

    @contextmanager
    def during(self, heartbeat_limit: float) -> Iterator[None]:
        with procs.Child(
                [sys.executable, "-c",
                 "import os, signal, sys, time; p = int(sys.argv[1]); "
                 "os.kill(p, signal.SIGSTOP); time.sleep(float(sys.argv[2])); "
                 "os.kill(p, signal.SIGCONT)", str(os.getpid()),
                 str(heartbeat_limit + 1.0)]) as helper:
            try:
                yield
            finally:
                helper.wait()
                os.kill(os.getpid(), signal.SIGCONT)


class Panic(Injection):
    """A kernel crash (sysrq-c): the VM runner must report the guest's panic."""

    @contextmanager
    def during(self, heartbeat_limit: float) -> Iterator[None]:
        with open("/proc/sys/kernel/sysrq", "w") as f:
            f.write("1")
        with open("/proc/sysrq-trigger", "w") as f:
            f.write("c")
        yield  # not reached: the guest kernel has crashed


INJECTIONS = Registry("--inject", (Splat("splat"), Stall("stall"),
                                    Panic("panic", test_vm_only=True)))


@contextmanager
def nothing() -> Iterator[None]:
    """No negative control."""
    yield
