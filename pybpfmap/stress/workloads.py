"""Workloads that drive lock-heavy kernel paths in three contexts.

Each runs in its own forked process for a bounded time and returns what it
did, so the probes see the locks taken on its behalf:

* ``process``: fork/exit, mmap/munmap (page faults), open/read/close — mm
  and VFS spinlocks in process context.
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
from contextlib import ExitStack, contextmanager
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

def process_work(deadline: float) -> dict[str, int]:
    """fork/exit, mmap/munmap with page faults, open/read/close."""
    forks = maps = reads = 0
    page = mmap.PAGESIZE
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
    return {"ops": forks + maps + reads, "forks": forks, "mmaps": maps, "file_reads": reads}


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


def _child(fn: Callable[..., dict[str, int]], args: tuple, queue) -> None:
    # Ctrl-C is the parent's to handle: it detaches everything, then its
    # daemon children are terminated.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        queue.put(fn(*args))
    except Exception as e:  # reported by the parent as the workload's error
        queue.put({"ops": 0, "error": f"{type(e).__name__}: {e}"})


def run(duration: float, contexts: tuple[str, ...] = CONTEXTS,
        pair: VethPair | None = None) -> dict[str, dict]:
    """Run the chosen workloads concurrently for ``duration`` seconds; return
    {context: counts, with ``ops_per_s``}.  A workload that does not finish
    within ``duration + 30`` s is killed and reported as stuck."""
    ctx = multiprocessing.get_context("fork")
    start = time.monotonic()
    deadline = start + duration
    jobs = {}
    for name in contexts:
        if name == "process":
            fn, args = process_work, (deadline,)
        elif name == "irq":
            fn, args = irq_work, (deadline,)
        elif name == "softirq":
            if pair is None:
                raise EnvironmentProblem("softirq", "needs a veth pair (veth_pair())")
            fn, args = softirq_work, (deadline, pair)
        else:
            raise ValueError(f"unknown workload context {name!r}")
        q = ctx.SimpleQueue()
        p = ctx.Process(target=_child, args=(fn, args, q), name=f"pybpfmap-{name}",
                        daemon=True)
        p.start()
        jobs[name] = (p, q)
    out = {}
    try:
        for name, (p, q) in jobs.items():
            p.join(timeout=max(0.0, deadline + 30 - time.monotonic()))
            if p.is_alive():
                out[name] = {"ops": 0, "error": "did not finish in time (stuck)"}
                continue
            res = q.get() if not q.empty() else {"ops": 0, "error": f"exit code {p.exitcode}"}
            res["seconds"] = round(duration, 3)
            res["ops_per_s"] = round(res["ops"] / duration, 1) if duration else 0.0
            out[name] = res
    finally:
        # On Ctrl-C or an error too: the children were forked with every BPF
        # and perf fd of the parent, so while they live a kprobe event cannot
        # be removed (EBUSY).  Stop them before the caller detaches.
        for p, _ in jobs.values():
            if p.is_alive():
                p.kill()
            p.join()
    return out
