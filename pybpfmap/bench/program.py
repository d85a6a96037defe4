"""The bench's BPF side: ``bpf/bench_triple.c`` on one map, and what it counted.

:func:`load` compiles the program with BCC for a map that pybpfmap created
itself (in its own memory cgroup, see :mod:`pybpfmap.bench.run`) and pinned
for a moment in a bpffs, so that BCC uses that map instead of making one.
:class:`Bench` then gives the programs' fds, attaches the syscall-triggered
one, and reads back after every window what the program counted on each CPU
(:class:`Counts`: runs, and failed map calls by errno) and what the kernel
counted for each program (:class:`ProgStats`: ``run_cnt``, ``run_time_ns``,
``recursion_misses``).  How those counters are laid out (which map call, which
errno slot) is read from the C source itself (:func:`layout`): it is listed
once, in bench_triple.c.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from pybpfmap import bpfsys
from pybpfmap.bench.triggers import Trigger
from pybpfmap.errors import EnvironmentProblem
from pybpfmap.loader import bcc_program, bpf_source
from pybpfmap.maps import MapSpec
from pybpfmap.pin import bpffs, pinned

SOURCE = "bench_triple.c"
KEYS = ("random", "tid")
KEY_BASE = 1 << 31   # the triple's keys; resident (--fill) keys are below


@dataclass(frozen=True)
class Workload:
    """What one program run does, beyond the map: compiled into the program."""

    key: str = "random"          # "random": a random key in this CPU's slice; "tid": thread id
    inkernel_triples: int = 100  # triples per BPF_PROG_TEST_RUN run
    syscall_triples: int = 1     # triples per syscall event
    trigger: Trigger | None = None   # the syscall mode's; None: no syscall mode


@dataclass(frozen=True)
class Layout:
    """bench_triple.c's ``struct counts``: the map calls (the rows of ``fail``)
    and the errno slots (its columns, slot 0 for any other errno)."""

    ops: tuple[str, ...]     # OP_UPDATE 0, OP_LOOKUP 1... -> ("update", "lookup", ...)
    slots: tuple[str, ...]   # "other", then slot()'s errno names by slot number

    @property
    def words(self) -> int:
        """u64 words of one CPU's struct counts: events, sink, fail[op][slot]."""
        return 2 + len(self.ops) * len(self.slots)


_SLOT_FN = re.compile(r"\bint slot\(long err\)\s*\{(.*?)^\}", re.M | re.S)


def _problem(what: str) -> EnvironmentProblem:
    return EnvironmentProblem(f"bpf/{SOURCE}", f"struct counts cannot be read: {what}")


def _define(source: str, name: str) -> int:
    """The value of ``#define NAME <number>`` in ``source``."""
    m = re.search(rf"^#define {name} (\d+)$", source, re.M)
    if m is None:
        raise _problem(f"no #define {name}")
    return int(m.group(1))


def _in_order(pairs: list[tuple[str, str]], first: int, end: int, what: str) -> list[str]:
    """The names of (name, number) ``pairs`` by number, which must run from
    ``first`` to ``end - 1`` with each number once."""
    by: dict[int, str] = {}
    for name, n in pairs:
        if int(n) in by:
            raise _problem(f"{what}: {by[int(n)]} and {name} are both {n}")
        by[int(n)] = name
    if sorted(by) != list(range(first, end)):
        raise _problem(f"{what}: numbered {sorted(by)}, not {first}..{end - 1}")
    return [by[n] for n in range(first, end)]


def parse_layout(source: str) -> Layout:
    """The :class:`Layout` that the C text ``source`` declares: the ``OP_*``
    defines numbered 0..NOPS-1, and slot()'s ``case ERRNO: return N;`` for
    1..NSLOTS-1 with ``default: return 0;``."""
    ops = _in_order(re.findall(r"^#define OP_(\w+) (\d+)$", source, re.M), 0,
                    _define(source, "NOPS"), "the OP_* defines")
    body = _SLOT_FN.search(source)
    if body is None:
        raise _problem("no slot() function")
    if not re.search(r"^\s*default: return 0;$", body.group(1), re.M):
        raise _problem("slot() must return 0 (any other errno) by default")
    slots = _in_order(re.findall(r"^\s*case (\w+): return (\d+);$", body.group(1), re.M), 1,
                      _define(source, "NSLOTS"), "slot()")
    return Layout(tuple(op.lower() for op in ops), ("other", *slots))


@functools.cache
def layout() -> Layout:
    """The counters' layout of bpf/bench_triple.c (read once)."""
    return parse_layout(bpf_source(SOURCE).read_text())


@dataclass
class Counts:
    """What the program counted during one window: its runs on each CPU
    (index = CPU number) and its failed map calls, op -> errno -> count."""

    events: list[int]
    failures: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, other: Counts) -> None:
        for op, errs in other.failures.items():
            mine = self.failures.setdefault(op, {})
            for name, n in errs.items():
                mine[name] = mine.get(name, 0) + n
        if len(self.events) < len(other.events):
            self.events += [0] * (len(other.events) - len(self.events))
        for i, n in enumerate(other.events):
            self.events[i] += n

    @property
    def failed(self) -> int:
        return sum(n for errs in self.failures.values() for n in errs.values())


@dataclass
class ProgStats:
    """The kernel's own counters of one program (bpf_prog_info)."""

    run_cnt: int
    run_time_ns: int
    recursion_misses: int | None   # None: this kernel's bpf_prog_info has no such field

    def minus(self, before: ProgStats) -> ProgStats:
        misses = None
        if self.recursion_misses is not None and before.recursion_misses is not None:
            misses = self.recursion_misses - before.recursion_misses
        return ProgStats(self.run_cnt - before.run_cnt, self.run_time_ns - before.run_time_ns,
                         misses)

    @property
    def ns_per_run(self) -> float | None:
        return self.run_time_ns / self.run_cnt if self.run_cnt else None


def key_range(max_entries: int, possible_cpus: int) -> int:
    """Keys per CPU slice: max_entries (as many keys as the map may hold, so
    the triple's keys spread over its buckets as a full map's would), less
    when the slices of every possible CPU would not fit above KEY_BASE."""
    return max(1, min(max_entries, ((1 << 32) - KEY_BASE) // max(possible_cpus, 1)))


def cflags(spec: MapSpec, work: Workload, pinned: str | None) -> list[str]:
    """The -D defines of bench_triple.c for this map and workload."""
    flags = [*spec.cflags("MAP"), f"-DINKERNEL_TRIPLES={work.inkernel_triples}",
             f"-DSYSCALL_TRIPLES={work.syscall_triples}", f"-DKEY_BASE={KEY_BASE}u",
             f"-DKEY_RANGE={key_range(spec.max_entries, bpfsys.possible_cpus())}u"]
    if work.key == "tid":
        flags.append("-DKEY_TID")
    if pinned:
        flags.append(f'-DMAP_PINNED="{pinned}"')
    if work.trigger is not None:
        flags += work.trigger.cflags()
    return flags


# --- the loaded programs -----------------------------------------------------

class Bench:
    """bench_triple.c loaded on one map (a BCC object)."""

    def __init__(self, bpf, spec: MapSpec, map_fd: int, work: Workload):
        self.bpf = bpf
        self.spec = spec
        self.map_fd = map_fd
        self.work = work
        self.counts_fd = bpf[b"COUNTS"].map_fd
        self._attached: str | None = None
        self._cpus = bpfsys.possible_cpus()
        self._layout = layout()

    # programs
    def prog_fd(self, name: str) -> int:
        """The fd of ``bench_<name>`` (SCHED_CLS) or ``trig_<name>`` (the trigger's type)."""
        from bcc import BPF

        if name.startswith("bench_"):
            prog_type = BPF.SCHED_CLS
        elif self.work.trigger is not None:
            prog_type = getattr(BPF, self.work.trigger.prog_type)
        else:
            raise ValueError(f"{name}: no trigger in this workload")
        return self.bpf.load_func(name.encode(), prog_type).fd

    def stats(self, name: str) -> ProgStats:
        info, has_misses = bpfsys.prog_info(self.prog_fd(name))
        return ProgStats(info.run_cnt, info.run_time_ns,
                         info.recursion_misses if has_misses else None)

    def attach(self, name: str) -> None:
        """Put ``trig_<name>`` on the syscall trigger (detaching any other)."""
        self.detach()
        self.prog_fd(f"trig_{name}")  # loaded as the trigger's program type
        self.work.trigger.attach(self.bpf, f"trig_{name}".encode())
        self._attached = name

    def detach(self) -> None:
        if self._attached is None:
            return
        self.work.trigger.detach(self.bpf)
        self._attached = None

    # the program's own counters
    def _buffer(self) -> ctypes.Array:
        return (ctypes.c_uint64 * (self._layout.words * self._cpus))()

    def reset(self) -> None:
        """Zero the program's counters on every CPU."""
        bpfsys.update(self.counts_fd, (ctypes.c_uint32 * 1)(0), self._buffer())

    def read(self) -> Counts:
        """The program's counters since the last :meth:`reset`."""
        buf = self._buffer()
        bpfsys.lookup(self.counts_fd, (ctypes.c_uint32 * 1)(0), buf)
        words, lay = list(buf), self._layout
        events = [words[c * lay.words] for c in range(self._cpus)]
        failures: dict[str, dict[str, int]] = {}
        for c in range(self._cpus):
            base = c * lay.words + 2
            for o, op in enumerate(lay.ops):
                for s, name in enumerate(lay.slots):
                    n = words[base + o * len(lay.slots) + s]
                    if n:
                        failures.setdefault(op, {})
                        failures[op][name] = failures[op].get(name, 0) + n
        return Counts(events, failures)


@contextlib.contextmanager
def load(spec: MapSpec, map_fd: int, work: Workload) -> Iterator[Bench]:
    """Compile and load bench_triple.c on the existing map ``map_fd`` (made from
    ``spec``); everything is detached and unloaded on exit."""
    with contextlib.ExitStack() as stack:
        fs = stack.enter_context(bpffs())
        with pinned(map_fd, fs) as path:
            b = stack.enter_context(bcc_program(SOURCE, cflags=cflags(spec, work, path)))
        bench = Bench(b, spec, map_fd, work)
        stack.callback(bench.detach)
        yield bench
