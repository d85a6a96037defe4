"""The writers scenario's user space: one process per CPU doing bpf(2) map ops
on the keys a program inserts, and what they measured.

A :class:`Writer` loops over the keys: an update of each (BPF_ANY, timed with
``perf_counter_ns()`` around the call as Python makes it, ctypes included),
a delete of every other one, one BPF_MAP_LOOKUP_AND_DELETE_BATCH and a GC
pass (a BPF_MAP_GET_NEXT_KEY walk deleting what it finds), counting every
result per errno.  :func:`writer_procs` forks one per CPU, pinned, each its
own process group owned by :mod:`pybpfmap.procs`, waiting until told to go;
each reports as JSON on a pipe.  Update latencies are a uniform sample of at
most :data:`MAX_SAMPLES` a writer (:class:`Reservoir`), weighed by the updates
each made when merged (:func:`user_latency`), the maximum exact.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import random
import select
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace

from pybpfmap import bpfsys, procs
from pybpfmap.errors import ENOTSUPP, errno_name
from pybpfmap.maps import MapSpec
from pybpfmap.stress.latency import Latency
from pybpfmap.stress.records import result_name

OPS = ("update", "delete", "batch", "gc")   # user space's, "user <op>" in records
MAX_SAMPLES = 100_000   # update latencies a writer keeps
BATCH_COUNT = 64        # elements one BPF_MAP_LOOKUP_AND_DELETE_BATCH moves at most
CHECK_EVERY = 64        # ops between clock reads in a writer
FINISH_S = 30.0         # how long past its time a writer may take to report
_NO_BATCH = (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP)   # a kernel without the batch op


# --- user space's latency ------------------------------------------------------

@dataclass
class Reservoir:
    """At most ``size`` of the values added, each kept with the same chance
    (Vitter's algorithm R), their number ``seen`` and the exact largest."""

    size: int = MAX_SAMPLES
    seen: int = 0
    max_ns: int = 0
    samples: list[int] = field(default_factory=list)

    def add(self, ns: int, rng: random.Random) -> None:
        self.seen += 1
        if ns > self.max_ns:
            self.max_ns = ns
        if len(self.samples) < self.size:
            self.samples.append(ns)
        else:
            j = rng.randrange(self.seen)
            if j < self.size:
                self.samples[j] = ns


def user_latency(parts: Sequence[Reservoir], rng: random.Random | None = None) -> Latency:
    """Every writer's update latencies as one distribution: from each writer
    a share of its samples in proportion to the updates it made (so that each
    update weighs the same), the exact maximum of all."""
    parts = [p for p in parts if p.seen and p.samples]
    if not parts:
        return Latency()
    rng = rng or random.Random(0)
    rate = min(len(p.samples) / p.seen for p in parts)
    pooled: list[int] = []
    for p in parts:
        pooled += rng.sample(p.samples, min(len(p.samples), max(1, round(rate * p.seen))))
    return replace(Latency.from_samples(pooled), max_ns=max(p.max_ns for p in parts))


# --- one writer ------------------------------------------------------------------

def _count(results: dict[str, int], err: int) -> None:
    name = result_name(err)
    results[name] = results.get(name, 0) + 1


class Writer:
    """One writer's loop over the key range on map ``fd`` (its key order
    shuffled by ``seed``), and what the kernel answered, per op and errno."""

    def __init__(self, fd: int, spec: MapSpec, keys: int, seed: int):
        self.fd, self.spec = fd, spec
        self.rng = random.Random(seed)
        order = list(range(keys))
        self.rng.shuffle(order)
        ksz, vsz = spec.key_size, spec.value_buffer_size()
        self.keys = [(ctypes.c_ubyte * ksz)(*n.to_bytes(ksz, "little")) for n in order]
        self.value = (ctypes.c_ubyte * vsz)()
        self.batch_keys = (ctypes.c_ubyte * (ksz * BATCH_COUNT))()
        self.batch_values = (ctypes.c_ubyte * (vsz * BATCH_COUNT))()
        self.tokens = [(ctypes.c_ubyte * 8)(), (ctypes.c_ubyte * 8)()]   # in, out
        self.resume = False             # the next batch goes on from tokens[0]
        self.cursor = (ctypes.c_ubyte * ksz)()
        self.next = (ctypes.c_ubyte * ksz)()
        self.results: dict[str, dict[str, int]] = {f"user {op}": {} for op in OPS}
        self.latency = Reservoir()
        self.rounds = 0
        self.moved = 0                  # elements the batches deleted
        self.no_batch: str | None = None    # the errno that said the kernel has no batch op
        self.seconds = 0.0

    def run(self, seconds: float) -> None:
        """Rounds of update, delete, batch and GC for ``seconds``."""
        t0 = time.monotonic()
        end = t0 + seconds
        while time.monotonic() < end:
            self.round(end)
        self.seconds = time.monotonic() - t0

    def round(self, end: float = float("inf")) -> None:
        """One round (cut short at ``end``, a time.monotonic())."""
        if self._updates(end) and self._deletes(end):
            self._batch()
            self._gc()
        self.rounds += 1

    def _updates(self, end: float) -> bool:
        res, fd, value, clock = self.results["user update"], self.fd, self.value, \
            time.perf_counter_ns
        for i, key in enumerate(self.keys):
            t0 = clock()
            try:
                bpfsys.update(fd, key, value, bpfsys.ANY)
            except bpfsys.BpfSyscallError as e:
                dt, err = clock() - t0, e.errno
            else:
                dt, err = clock() - t0, 0
            self.latency.add(dt, self.rng)
            _count(res, err)
            if i % CHECK_EVERY == CHECK_EVERY - 1 and time.monotonic() >= end:
                return False
        return True

    def _delete(self, key: ctypes.Array) -> int:
        try:
            bpfsys.delete(self.fd, key)
        except bpfsys.BpfSyscallError as e:
            return e.errno
        return 0

    def _deletes(self, end: float) -> bool:
        res = self.results["user delete"]
        for i, key in enumerate(self.keys[::2]):
            _count(res, self._delete(key))
            if i % CHECK_EVERY == CHECK_EVERY - 1 and time.monotonic() >= end:
                return False
        return True

    def _batch(self) -> None:
        """One BPF_MAP_LOOKUP_AND_DELETE_BATCH, going on where the last one
        stopped (from the beginning after the end of the map)."""
        if self.no_batch:
            return
        res = self.results["user batch"]
        try:
            n, at_end = bpfsys.lookup_and_delete_batch(
                self.fd, self.batch_keys, self.batch_values, BATCH_COUNT,
                self.tokens[0] if self.resume else None, self.tokens[1])
        except bpfsys.BpfSyscallError as e:
            _count(res, e.errno)
            if e.errno in _NO_BATCH:
                self.no_batch = errno_name(e.errno)
            return
        self.moved += n
        _count(res, errno.ENOENT if at_end else 0)
        self.resume = not at_end
        self.tokens.reverse()    # this call's out is the next one's in

    def _gc(self) -> None:
        """Walk the map with BPF_MAP_GET_NEXT_KEY, deleting each key once
        the next one is known; at most max_entries of them (the program and the
        other writers insert meanwhile)."""
        res = self.results["user gc"]
        cursor = None
        for _ in range(self.spec.max_entries):
            try:
                bpfsys.next_key(self.fd, cursor, self.next)
            except bpfsys.BpfSyscallError as e:
                if e.errno != errno.ENOENT:      # ENOENT: the end of the map
                    _count(res, e.errno)
                break
            if cursor is not None:
                _count(res, self._delete(cursor))
            cursor = self.cursor
            ctypes.memmove(cursor, self.next, len(cursor))
        if cursor is not None:
            _count(res, self._delete(cursor))

    def report(self, cpu: int) -> dict:
        """What the parent gets back (JSON)."""
        return {"cpu": cpu, "pid": os.getpid(), "rounds": self.rounds,
                "seconds": round(self.seconds, 3), "results": self.results,
                "batch_moved": self.moved, "no_batch": self.no_batch,
                "latency": {"seen": self.latency.seen, "max_ns": self.latency.max_ns,
                            "samples": self.latency.samples}}


# --- the writer processes ----------------------------------------------------------

def _writer_main(cpu: int, fd: int, spec: MapSpec, keys: int, seconds: float, go_r: int,
                 out_w: int) -> None:
    """A forked writer: pin, wait for the go, loop, report, exit (never returns)."""
    code = 1
    try:
        # Ctrl-C is the parent's: it detaches everything, then kills us.
        procs.child_setup(sigint=signal.SIG_IGN)
        os.setpgid(0, 0)
        os.sched_setaffinity(0, {cpu})
        w = Writer(fd, spec, keys, seed=cpu)
        try:
            if os.read(go_r, 1):
                w.run(seconds)
            out = w.report(cpu)
        except Exception as e:  # reported by the parent as the writer's error
            out = {"cpu": cpu, "pid": os.getpid(), "error": f"{type(e).__name__}: {e}"}
        with os.fdopen(out_w, "w") as f:
            json.dump(out, f)
        code = 0
    finally:
        os._exit(code)


@dataclass
class _Proc:
    cpu: int
    group: procs.Group
    out: int      # the read end of its report pipe


class WriterProcs:
    """One writer process per CPU in ``cpus``, forked and waiting for
    :meth:`go`; each leads its own process group, owned by :mod:`pybpfmap.procs`."""

    def __init__(self, fd: int, spec: MapSpec, keys: int, cpus: Sequence[int], seconds: float):
        self.seconds = seconds
        self.procs: list[_Proc] = []
        go_r, self._go = os.pipe()
        try:
            for cpu in cpus:
                out_r, out_w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(out_r)
                    os.close(self._go)
                    _writer_main(cpu, fd, spec, keys, seconds, go_r, out_w)
                os.close(out_w)
                self.procs.append(_Proc(cpu, procs.adopt(pid), out_r))
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(go_r)
        self._deadline: float | None = None

    @property
    def pids(self) -> list[int]:
        return [p.group.pgid for p in self.procs]

    def go(self) -> None:
        """Every writer starts now, for ``seconds``."""
        self._deadline = time.monotonic() + self.seconds
        os.write(self._go, b"g" * len(self.procs))

    def results(self) -> list[dict]:
        """Each writer's report, once it has finished; a writer that has not
        reported :data:`FINISH_S` after its time is reported as stuck."""
        if self._deadline is None:
            self.go()
        out = []
        for p in self.procs:
            data = _read_until_eof(p.out, self._deadline + FINISH_S)
            try:
                got = json.loads(data) if data else None
            except ValueError:
                got = None
            if got is None:
                try:
                    status = p.group.wait(0.5)
                except subprocess.TimeoutExpired:  # still running: stuck
                    status = None
                got = {"cpu": p.cpu, "pid": p.group.pgid,
                       "error": "did not finish in time (stuck)" if status is None
                       else f"exited with status {status} without a report"}
            out.append(got)
        return out

    def stop(self) -> None:
        """Kill every writer (each its own group), wait until none is alive,
        close the pipes."""
        stuck: list[procs.StuckProcess] = []
        for p in self.procs:
            try:
                p.group.kill()
            except procs.StuckProcess as e:
                stuck.append(e)
            finally:
                _close(p.out)
        _close(self._go)
        if stuck:
            raise stuck[0]


def _close(fd: int) -> None:
    with suppress(OSError):
        os.close(fd)


def _read_until_eof(fd: int, deadline: float) -> bytes | None:
    """Everything a pipe gives until its writer closes it; None past ``deadline``."""
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


@contextmanager
def writer_procs(fd: int, spec: MapSpec, keys: int, cpus: Sequence[int], seconds: float
                 ) -> Iterator[WriterProcs]:
    """Fork the writers, waiting; on exit (also on Ctrl-C or an error) none is left."""
    w = WriterProcs(fd, spec, keys, cpus, seconds)
    try:
        yield w
    finally:
        w.stop()
