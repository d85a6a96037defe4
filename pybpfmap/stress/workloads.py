"""Workloads that drive lock-heavy kernel paths in three contexts.

Each runs in its own forked process for a bounded time and returns what it
did, so the probes see the locks taken on its behalf:

* ``process``: fork/exit, mmap/munmap (page faults), open/read/close, and
  three processes appending to one file — mm and VFS spinlocks in process
  context, and a contended inode lock.
* ``softirq``: UDP traffic between two network namespaces over a veth pair
  (made with pyroute2): veth transmit queues to the backlog and the NET_RX
  softirq delivers — socket and queue locks in softirq context.
* ``irq``: an interval timer firing every 0.5 ms (hrtimer in hard irq,
  SIGALRM), self-sent signals and pipe ping-pong wakeups — ``siglock`` and
  ``pi_lock`` taken with spin_lock_irqsave / unlock_irqrestore.

Workloads are processes, not threads, so they do not compete with the
heartbeat for the GIL.
"""

from __future__ import annotations

import errno
import mmap
import multiprocessing
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass

from pybpfmap.errors import EnvironmentProblem

CONTEXTS = ("process", "softirq", "irq")
_PORT = 39_999


@dataclass(frozen=True)
class VethPair:
    """Two network namespaces joined by a veth pair, with IPv4 addresses."""

    ns_a: str
    ns_b: str
    addr_a: str = "192.0.2.1"
    addr_b: str = "192.0.2.2"


def _ignore_gone(func: Callable[[], object]) -> None:
    """Run a teardown step; something already gone (ENOENT/ENODEV) is fine."""
    try:
        func()
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENODEV):
            raise
    except Exception as e:  # pyroute2 NetlinkError carries .code
        if getattr(e, "code", None) not in (errno.ENOENT, errno.ENODEV):
            raise


@contextmanager
def veth_pair() -> Iterator[VethPair]:
    """Make two uuid-named network namespaces and a veth pair between them;
    remove them on exit (removing a namespace removes its veth end)."""
    try:
        from pyroute2 import IPRoute, NetNS, netns
    except ImportError:
        raise EnvironmentProblem("pyroute2", "the softirq workload needs pyroute2 "
                                 "(apt install python3-pyroute2)") from None
    tag = uuid.uuid4().hex[:8]
    pair = VethPair(f"pybpfmap-{tag}-a", f"pybpfmap-{tag}-b")
    veth_a, veth_b = f"pbm{tag}a", f"pbm{tag}b"
    with ExitStack() as stack:
        for ns in (pair.ns_a, pair.ns_b):
            netns.create(ns)
            stack.callback(_ignore_gone, lambda ns=ns: netns.remove(ns))
        with IPRoute() as ipr:
            ipr.link("add", ifname=veth_a, kind="veth", peer=veth_b)
            stack.callback(_ignore_gone, lambda: _del_link(veth_a))
            for ifname, ns in ((veth_a, pair.ns_a), (veth_b, pair.ns_b)):
                (idx,) = ipr.link_lookup(ifname=ifname)
                ipr.link("set", index=idx, net_ns_fd=ns)
        for ifname, ns, addr in ((veth_a, pair.ns_a, pair.addr_a),
                                 (veth_b, pair.ns_b, pair.addr_b)):
            with NetNS(ns) as n:
                (idx,) = n.link_lookup(ifname=ifname)
                n.addr("add", index=idx, address=addr, prefixlen=24)
                n.link("set", index=idx, state="up")
                (lo,) = n.link_lookup(ifname="lo")
                n.link("set", index=lo, state="up")
        yield pair


def _del_link(ifname: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if idx:
            ipr.link("del", index=idx[0])


# --- the workloads: each runs until ``deadline`` (time.monotonic) -------------

def _append_loop(path: str, deadline: float) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    block = b"a" * 4096
    n = 0
    while time.monotonic() < deadline:
        os.write(fd, block)
        n += 1
        if n % 256 == 0:
            os.ftruncate(fd, 0)
    os.close(fd)
    os._exit(0)


def process_work(deadline: float) -> dict[str, int]:
    """fork/exit, mmap/munmap with page faults, open/read/close; and two
    helpers appending to one file, so that the inode lock (i_rwsem) is
    contended (lock:contention_begin fires for sleeping locks too)."""
    forks = maps = reads = appends = 0
    page = mmap.PAGESIZE
    path = f"/dev/shm/pybpfmap-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(path, "wb"):
        pass
    helpers = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            _append_loop(path, deadline)
        helpers.append(pid)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        forks, maps, reads, appends = _process_loop(deadline, fd, page)
    finally:
        os.close(fd)
        for pid in helpers:
            os.waitpid(pid, 0)
        os.unlink(path)
    return {"ops": forks + maps + reads + appends, "forks": forks, "mmaps": maps,
            "file_reads": reads, "appends": appends}


def _process_loop(deadline: float, fd: int, page: int) -> tuple[int, int, int, int]:
    forks = maps = reads = appends = 0
    block = b"p" * 4096
    while time.monotonic() < deadline:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        forks += 1
        m = mmap.mmap(-1, 16 * page)
        for off in range(0, 16 * page, page):
            m[off] = 1
        m.close()
        maps += 1
        with open("/proc/self/stat", "rb") as f:
            f.read()
        reads += 1
        os.write(fd, block)
        appends += 1
    return forks, maps, reads, appends


def softirq_work(deadline: float, pair: VethPair) -> dict[str, int]:
    """UDP from namespace A to namespace B over the veth pair."""
    from pyroute2 import netns

    netns.setns(pair.ns_b, flags=0)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((pair.addr_b, _PORT))
    rx.setblocking(False)
    netns.setns(pair.ns_a, flags=0)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"x" * 64
    sent = received = 0
    while time.monotonic() < deadline:
        for _ in range(32):
            try:
                tx.sendto(payload, (pair.addr_b, _PORT))
                sent += 1
            except OSError as e:
                if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
        while True:
            try:
                rx.recv(2048)
                received += 1
            except BlockingIOError:
                break
    tx.close()
    rx.close()
    return {"ops": received, "packets_sent": sent, "packets_received": received}


def irq_work(deadline: float) -> dict[str, int]:
    """A 0.5 ms interval timer, self-sent signals and pipe wakeups."""
    ticks = signals = 0

    def on_alarm(signum, frame):
        nonlocal ticks
        ticks += 1

    def on_usr1(signum, frame):
        nonlocal signals
        signals += 1

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGUSR1, on_usr1)
    ping_r, ping_w = os.pipe()
    pong_r, pong_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ping_w)
        os.close(pong_r)
        while os.read(ping_r, 1):
            os.write(pong_w, b"p")
        os._exit(0)
    os.close(ping_r)
    os.close(pong_w)
    wakeups = 0
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    try:
        while time.monotonic() < deadline:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.write(ping_w, b"p")
            os.read(pong_r, 1)
            wakeups += 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        os.close(ping_w)
        os.waitpid(pid, 0)
        os.close(pong_r)
    return {"ops": ticks + signals + wakeups, "timer_ticks": ticks, "signals": signals,
            "wakeups": wakeups}


def _child(fn: Callable[..., dict[str, int]], args: tuple, go, duration: float,
           queue) -> None:
    # Ctrl-C is the parent's to handle: it detaches everything, then stops us.
    # Our own process group, so that stop() reaches the helpers we fork too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.setpgid(0, 0)
    try:
        go.wait()
        queue.put(fn(time.monotonic() + duration, *args))
    except Exception as e:  # reported by the parent as the workload's error
        queue.put({"ops": 0, "error": f"{type(e).__name__}: {e}"})


class Started:
    """Workload processes forked and waiting for :meth:`go`.

    They are forked *before* the BPF program is loaded and before any thread
    (the heartbeat) starts: they hold no BPF or perf fd of the parent (which
    would keep a kprobe event busy) and fork() happens single-threaded.
    """

    def __init__(self, duration: float, contexts: tuple[str, ...], pair: VethPair | None):
        self.duration = duration
        ctx = multiprocessing.get_context("fork")
        self._go = ctx.Event()
        self.jobs: dict[str, tuple] = {}
        for name in contexts:
            if name == "process":
                fn, args = process_work, ()
            elif name == "irq":
                fn, args = irq_work, ()
            elif name == "softirq":
                if pair is None:
                    raise EnvironmentProblem("softirq", "needs a veth pair (veth_pair())")
                fn, args = softirq_work, (pair,)
            else:
                raise ValueError(f"unknown workload context {name!r}")
            q = ctx.SimpleQueue()
            p = ctx.Process(target=_child, args=(fn, args, self._go, duration, q),
                            name=f"pybpfmap-{name}", daemon=True)
            p.start()
            self.jobs[name] = (p, q)
        self._deadline: float | None = None

    def go(self) -> None:
        """Start every workload now; each runs for ``duration`` seconds."""
        self._deadline = time.monotonic() + self.duration
        self._go.set()

    def results(self) -> dict[str, dict]:
        """Wait for the workloads; {context: counts, with ``ops_per_s``}.  One
        that has not finished 30 s after its time is reported as stuck."""
        if self._deadline is None:
            self.go()
        out = {}
        for name, (p, q) in self.jobs.items():
            p.join(timeout=max(0.0, self._deadline + 30 - time.monotonic()))
            if p.is_alive():
                out[name] = {"ops": 0, "error": "did not finish in time (stuck)"}
                continue
            res = q.get() if not q.empty() else {"ops": 0, "error": f"exit code {p.exitcode}"}
            res["seconds"] = round(self.duration, 3)
            res["ops_per_s"] = round(res["ops"] / self.duration, 1) if self.duration else 0.0
            out[name] = res
        return out

    def stop(self) -> None:
        """Kill every workload process and the helpers it forked."""
        for p, _ in self.jobs.values():
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            if p.is_alive():  # killed before it made its own group
                p.kill()
            p.join()


@contextmanager
def started(duration: float, contexts: tuple[str, ...] = CONTEXTS,
            pair: VethPair | None = None) -> Iterator[Started]:
    """Fork the workloads, waiting; on exit (also on Ctrl-C or an error) any
    that still run are killed."""
    s = Started(duration, contexts, pair)
    try:
        yield s
    finally:
        s.stop()


def run(duration: float, contexts: tuple[str, ...] = CONTEXTS,
        pair: VethPair | None = None) -> dict[str, dict]:
    """Run the chosen workloads concurrently for ``duration`` seconds now."""
    with started(duration, contexts, pair) as s:
        s.go()
        return s.results()
