"""The stress workloads, run at once: lock-heavy kernel paths in three contexts.

``process``, ``softirq`` and ``irq`` from the one workload registry
(:mod:`pybpfmap.workloads`), each in its own forked process for one bounded
window, so the probes see the locks taken on their behalf; the softirq one
sends its traffic over a veth pair between two network namespaces made here
with pyroute2.  Processes, not threads: they do not compete with the
heartbeat for the GIL.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from pybpfmap import procs
from pybpfmap.errors import EnvironmentProblem
from pybpfmap.workloads import Irq, Process, Softirq, Workload

CONTEXTS = ("process", "softirq", "irq")


@contextmanager
def on_first_cpu() -> Iterator[list[int]]:
    """This process pinned to the first CPU it may run on (where a scenario's
    program and its loop meet), its CPUs as before on the way out; yields them."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        yield sorted(cpus)
    finally:
        os.sched_setaffinity(0, cpus)


@dataclass(frozen=True)
class VethPair:
    """Two network namespaces joined by a veth pair, with IPv4 addresses."""

    ns_a: str
    ns_b: str
    addr_a: str = "192.0.2.1"
    addr_b: str = "192.0.2.2"
    veth_a: str = ""     # the ends' names, each in its namespace
    veth_b: str = ""


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
    veth_a, veth_b = f"pbm{tag}a", f"pbm{tag}b"
    pair = VethPair(f"pybpfmap-{tag}-a", f"pybpfmap-{tag}-b", veth_a=veth_a, veth_b=veth_b)
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


@contextmanager
def xdp_attached(pair: VethPair, fn) -> Iterator[None]:
    """BCC function ``fn`` (loaded as XDP) on the receiving end of ``pair``, in
    its namespace, generic mode: it runs in the NET_RX softirq for every packet
    the softirq workload sends; detached on exit."""
    from bcc import BPF
    from pyroute2 import netns

    def in_b(func) -> None:
        netns.pushns(pair.ns_b)
        try:
            func()
        finally:
            netns.popns()

    try:
        in_b(lambda: BPF.attach_xdp(pair.veth_b, fn, BPF.XDP_FLAGS_SKB_MODE))
    except Exception as e:  # BCC raises bare Exception with strerror's text
        raise EnvironmentProblem("xdp", f"cannot attach the softirq holder to "
                                 f"{pair.veth_b}: {e}") from None
    try:
        yield
    finally:
        with contextlib.suppress(Exception):   # gone with its namespace is fine too
            in_b(lambda: BPF.remove_xdp(pair.veth_b, BPF.XDP_FLAGS_SKB_MODE))


def _del_link(ifname: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if idx:
            ipr.link("del", index=idx[0])


def _child(work: Workload, go, duration: float, queue) -> None:
    # Ctrl-C is the parent's to handle: it detaches everything, then stops us.
    # Our own process group (the parent adopts it), so that stop() reaches the
    # helpers we fork too; we die with the parent.
    procs.child_setup(sigint=signal.SIG_IGN)
    os.setpgid(0, 0)
    try:
        with work as w:
            go.wait()
            got = w.window(duration)
        queue.put({"ops": got.ops, **got.counts})
    except Exception as e:  # reported by the parent as the workload's error
        queue.put({"ops": 0, "error": f"{type(e).__name__}: {e}"})


def _join(p: multiprocessing.process.BaseProcess, timeout: float | None) -> int | None:
    """A :class:`pybpfmap.procs.Group`'s ``reap`` for a multiprocessing child."""
    p.join(timeout)
    return p.exitcode


def workloads_for(contexts: tuple[str, ...], pair: VethPair | None) -> list[Workload]:
    """The stress workloads for ``contexts`` (softirq needs the veth pair)."""
    make: dict[str, Callable[[], Workload]] = {
        "process": Process, "irq": Irq, "softirq": lambda: Softirq(pair)}
    unknown = [name for name in contexts if name not in make]
    if unknown:
        raise ValueError(f"unknown workload context(s) {', '.join(unknown)}; "
                         f"stress runs {', '.join(CONTEXTS)}")
    return [make[name]() for name in contexts]


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
        self._groups: list[procs.Group] = []
        try:
            for work in workloads_for(contexts, pair):
                q = ctx.SimpleQueue()
                p = ctx.Process(target=_child, args=(work, self._go, duration, q),
                                name=f"pybpfmap-{work.name}", daemon=True)
                p.start()
                self.jobs[work.name] = (p, q)
                self._groups.append(procs.adopt(p.pid, functools.partial(_join, p)))
        except BaseException:
            self.stop()
            raise
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
        """Kill every workload process and the helpers it forked (each its
        own group), and wait until none of them is alive."""
        stuck: list[procs.StuckProcess] = []
        for group in self._groups:
            try:
                group.kill()
            except procs.StuckProcess as e:
                stuck.append(e)
        if stuck:
            raise stuck[0]


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
