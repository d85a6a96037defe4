"""The triple triggered by a syscall, as samples/bpf/map_perf_test does.

A program (``trig_triple`` or ``trig_empty`` in bpf/bench_triple.c) runs on
every getuid(): on a kprobe on the syscall's entry function where the kernel
has kprobes (map_perf_test's way), else on the ``syscalls:sys_enter_getuid``
tracepoint, else on the ``sys_enter`` raw tracepoint filtered by syscall
number.  One forked process per CPU, pinned with sched_setaffinity, calls
getuid() in a tight loop for the same wall-clock window and counts its calls:
events per second.  The empty program, attached the same way, gives the
trigger's own cost; the difference in ns per event is the map's.

A tracing program on a BPF_F_NO_PREALLOC hash is what Linux kernel commit
94dacdbd5d2d ("bpf: Tighten the requirements for preallocated hash maps")
(in v5.7) warns about (a one-time WARN splat and a verifier message; refused
on PREEMPT_RT) until Linux kernel commit 34dd3bad1a6f ("bpf: Relax the
requirement to use preallocated hash maps in tracing progs.") (in v6.1): on
such kernels run the syscall mode in the test VM, not on a machine you care
about.

The Python loop drives ``os.getuid`` from C-level iterators (no bytecode per
call); :func:`compiled_rate` runs the same loop compiled with gcc so that the
Python trigger's rate can be reported as a fraction of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat, starmap
from pathlib import Path

from pybpfmap.errors import EnvironmentProblem, UsageError
from pybpfmap.headers import TRACEFS
from pybpfmap.kernel import kprobes_available
from pybpfmap.loader import bcc_program, map_fd
from pybpfmap.maps import MapSpec

SOURCE = "bench_triple.c"
SYSCALL = "getuid"
TRACEPOINT = f"syscalls:sys_enter_{SYSCALL}"
TRIGGERS = ("kprobe", "tracepoint", "raw_tp")
LOOP_C = Path(__file__).resolve().parent / "trigger_loop.c"
CHUNK = 4096  # getuid() calls per C-level burst in the Python trigger


def choose_trigger(requested: str = "auto") -> tuple[str, str]:
    """(trigger, why): kprobe where kprobes exist, else the syscall
    tracepoint, else the raw tracepoint."""
    kprobes, kreason = kprobes_available()
    tp = os.path.isdir(os.path.join(TRACEFS, "events", *TRACEPOINT.split(":")))
    if requested == "kprobe" and not kprobes:
        raise UsageError("--trigger", f"kprobe: {kreason}; or run the bench in the test VM "
                         "with --kernel SUITE")
    if requested == "tracepoint" and not tp:
        raise UsageError("--trigger", f"tracepoint {TRACEPOINT} not in {TRACEFS}/events "
                         "(kernel without CONFIG_FTRACE_SYSCALLS?)")
    if requested != "auto":
        return requested, "asked for"
    if kprobes:
        return "kprobe", "kprobes available (as samples/bpf/map_perf_test)"
    if tp:
        return "tracepoint", f"no kprobes ({kreason})"
    return "raw_tp", f"no kprobes and no {TRACEPOINT}"


@dataclass
class Attached:
    """A loaded bench object whose ``attach(name)`` puts trig_<name> on the trigger."""

    bpf: object
    trigger: str
    map_fd: int
    triples: int
    _current: str | None = None

    def attach(self, name: str) -> None:
        self.detach()
        fn = f"trig_{name}".encode()
        b = self.bpf
        if self.trigger == "kprobe":
            b.attach_kprobe(event=b.get_syscall_fnname(SYSCALL), fn_name=fn)
        elif self.trigger == "tracepoint":
            b.attach_tracepoint(tp=TRACEPOINT.encode(), fn_name=fn)
        else:
            b.attach_raw_tracepoint(tp=b"sys_enter", fn_name=fn)
        self._current = name

    def detach(self) -> None:
        if self._current is None:
            return
        b = self.bpf
        if self.trigger == "kprobe":
            b.detach_kprobe(event=b.get_syscall_fnname(SYSCALL))
        elif self.trigger == "tracepoint":
            b.detach_tracepoint(tp=TRACEPOINT.encode())
        else:
            b.detach_raw_tracepoint(tp=b"sys_enter")
        # bcc keeps the loaded function cached by name; a re-attach reuses it.
        self._current = None


@contextmanager
def load(spec: MapSpec, trigger: str, triples: int = 1) -> Iterator[Attached]:
    """Load bench_triple.c for ``trigger``; nothing is attached until ``attach``."""
    cflags = [f"-DTRIPLES={triples}"]
    if trigger == "raw_tp":
        cflags.append(f"-DTRIGGER_RAW_TP_NR={_syscall_nr(SYSCALL)}")
    with bcc_program(SOURCE, maps={"MAP": spec}, cflags=cflags) as b:
        att = Attached(b, trigger, map_fd(b, "MAP"), triples)
        try:
            yield att
        finally:
            att.detach()


def _syscall_nr(name: str) -> int:
    from bcc.syscall import syscalls  # {nr: name} for this architecture

    for nr, sname in syscalls.items():
        if sname == name.encode():
            return nr
    raise EnvironmentProblem("--trigger raw_tp", f"syscall number of {name} unknown")


def _python_loop(end: float) -> tuple[int, int, int]:
    """getuid() in bursts of CHUNK until monotonic ``end``:
    (calls, elapsed ns, median ns per burst)."""
    getuid = os.getuid
    clock = time.monotonic_ns
    end_ns = int(end * 1e9)
    bursts = []
    start = t = clock()
    while t < end_ns or not bursts:
        t0 = t
        deque(starmap(getuid, repeat((), CHUNK)), maxlen=0)
        t = clock()
        bursts.append(t - t0)
    bursts.sort()
    return len(bursts) * CHUNK, t - start, bursts[len(bursts) // 2]


@dataclass
class Rate:
    """One trigger's events per second: over its whole window (``mean``) and in
    its median burst (``burst``), which ignores time the CPU was taken away."""

    mean: float
    burst: float


def python_rates(cpus: list[int], seconds: float) -> list[Rate]:
    """One pinned, forked Python trigger per CPU, all over the same window."""
    start = time.monotonic() + 0.05 + 0.01 * len(cpus)
    end = start + seconds
    children = []
    for cpu in cpus:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: pin, wait for the common start, loop, report
            code = 1
            try:
                os.close(r)
                os.sched_setaffinity(0, {cpu})
                while time.monotonic() < start:
                    pass
                os.write(w, json.dumps(_python_loop(end)).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        children.append((pid, r))
    rates = []
    for pid, r in children:
        with os.fdopen(r) as f:
            text = f.read()
        _, status = os.waitpid(pid, 0)
        if status != 0 or not text:
            raise EnvironmentProblem("bench --mode syscall", "a trigger process failed")
        calls, ns, burst_ns = json.loads(text)
        rates.append(Rate(calls * 1e9 / ns, CHUNK * 1e9 / burst_ns))
    return rates


def compiled_loop() -> tuple[Path | None, str]:
    """(path, "") of trigger_loop.c built with gcc into the cache, or (None, why)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None, "no C compiler (gcc) on this machine"
    src = LOOP_C.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pybpfmap"
    exe = cache / f"trigger_loop-{hashlib.sha256(src).hexdigest()[:12]}"
    if exe.exists():
        return exe, ""
    cache.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_suffix(f".{os.getpid()}")
    out = subprocess.run([gcc, "-O2", "-o", str(tmp), str(LOOP_C)],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return None, f"gcc failed: {out.stderr.strip()[:200]}"
    tmp.replace(exe)
    return exe, ""


def compiled_rate(exe: Path, cpu: int, seconds: float) -> Rate:
    """Events per second of the compiled loop pinned to ``cpu``."""
    out = subprocess.run([str(exe), f"{seconds:.3f}", str(CHUNK)], capture_output=True,
                         text=True, timeout=seconds + 30,
                         preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    try:
        calls, ns, burst_ns = (int(x) for x in out.stdout.split())
    except ValueError:
        raise EnvironmentProblem(str(exe), f"compiled trigger failed: {out.stderr[:200]}") \
            from None
    return Rate(calls * 1e9 / ns, CHUNK * 1e9 / burst_ns)
