"""Workloads: bounded, counted load on kernel paths, for stress and bcc-compare alike.

A :class:`Workload` is set up once (``with``) and then asked for one *window*
at a time: about ``duration`` seconds of work, returned as a :class:`Window`
(operations, elapsed seconds, and per-kind counts).  Each runs in a process
of its own (so nobody competes with it for the GIL): ``pybpfmap stress``
forks its workloads (:mod:`pybpfmap.stress.workloads`), ``bcc-compare``
has windows served by a child process (:mod:`.server`: a file, a listening
socket or a pinned echo child is made once, not per window; under TCG a
Python start alone takes seconds).  :data:`WORKLOADS` is the registry.

One operation is:

``wakeups``      a pipe round trip between two processes pinned to one CPU
                 (two wakeups, two context switches)
``getpid``       one call of libc ``getpid()`` (through ``os.getpid``)
``open``         one ``openat()`` + ``close()`` of /dev/null
``tcp_connect``  one TCP connect + accept over loopback, closed with RST
                 (SO_LINGER 0, so no TIME_WAIT pile-up)
``block_io``     one 4 KiB O_DIRECT read at a random offset of a 16 MiB file
                 on a block device (never tmpfs or 9p)
``process``      (stress) a fork/exit, an mmap/munmap with page faults, an
                 open/read/close and an append to a file two helpers append to
                 too: mm and VFS spinlocks in process context, a contended inode lock
``softirq``      (stress) a UDP datagram between two network namespaces over a
                 veth pair: queue and socket locks in the NET_RX softirq
``irq``          (stress) a self-sent signal and a pipe wakeup, with a 0.5 ms
                 interval timer firing in hard irq: ``siglock`` and ``pi_lock``
                 taken with spin_lock_irqsave / unlock_irqrestore

Modules: :mod:`.base` (what a workload is), :mod:`.events` (the first five:
what the bcc tools trace), :mod:`.contexts` (the stress ones), :mod:`.server`
(windows served to another process, and its client).  Run one window by
hand: ``python -m pybpfmap.workloads open 1``; serve windows: ``python -m
pybpfmap.workloads --serve open`` (a duration per line in, one JSON line out).
"""

from __future__ import annotations

from pybpfmap.workloads.base import Window, Workload
from pybpfmap.workloads.contexts import Irq, Process, Softirq
from pybpfmap.workloads.events import BlockIo, Getpid, OpenClose, TcpConnect, Wakeups

__all__ = ["WORKLOADS", "Window", "Workload", "Wakeups", "Getpid", "OpenClose", "TcpConnect",
           "BlockIo", "Process", "Softirq", "Irq"]

WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (
    Wakeups, Getpid, OpenClose, TcpConnect, BlockIo, Process, Softirq, Irq)}
