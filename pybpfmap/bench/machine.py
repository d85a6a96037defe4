"""What about this machine changes a bench figure, read from the kernel.

Every record carries these facts (:class:`Machine`): which kernel, where it
runs (the host, or the test VM and how qemu runs it: TCG figures are
emulation figures), how many CPUs are possible and online (per-CPU map
values and bpf_mem_alloc caches are sized by them), whether the JIT is on,
whether ``kernel.bpf_stats_enabled`` was already on (then every program run
pays for two clock reads), and which CPUs were used and whether two of them
are SMT siblings of one core (they share its execution units, so two
"CPUs" are less than twice one).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pybpfmap import bpfsys
from pybpfmap.errors import UsageError
from pybpfmap.guest import Accel
from pybpfmap.kernel import detect_vm, place

CPU_SYS = Path("/sys/devices/system/cpu")
BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")
JIT_ENABLE = Path("/proc/sys/net/core/bpf_jit_enable")
STATS_ENABLED = Path("/proc/sys/kernel/bpf_stats_enabled")
# kernel/bpf/hashtab.c: htab_map_alloc() uses a per-CPU element counter when
# max_entries / 2 > num_online_cpus() * PERCPU_COUNTER_BATCH.
PERCPU_COUNTER_BATCH = 32


@dataclass
class Machine:
    """The facts of this machine that every bench record repeats."""

    kernel_release: str
    where: str                  # "host" or "vm:<catalog kernel>"
    accel: Accel | None         # in the test VM: how qemu runs it
    virt: str                   # what the host itself runs on ("none": bare metal)
    possible_cpus: int
    online_cpus: int
    bpf_jit_enable: int | None  # None: no such sysctl (no JIT)
    bpf_stats_enabled: bool | None   # the sysctl as found (None: kernel without it)
    percpu_counter: bool        # whether this kernel has htab's per-CPU element counter
    cpu_model: str = ""


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def has_percpu_element_counter() -> bool:
    """Whether hash maps can count elements with a per-CPU counter (the
    ``use_percpu_counter`` field of struct bpf_htab, added by Linux kernel
    commit 86fe28f7692d ("bpf: Optimize element count in non-preallocated
    hash map.") (in v6.1)).  Probed in the kernel's BTF (its string table
    holds every member name); kernels without BTF are taken not to have it."""
    try:
        data = BTF_VMLINUX.read_bytes()
    except OSError:
        return False
    return b"\0use_percpu_counter\0" in data


def probe() -> Machine:
    """This machine's facts, as the bench records them."""
    where, accel = place()
    in_vm, virt = detect_vm()
    stats = _read_int(STATS_ENABLED)
    return Machine(kernel_release=os.uname().release, where=where, accel=accel,
                   virt=virt if in_vm else "none", possible_cpus=bpfsys.possible_cpus(),
                   online_cpus=os.sysconf("SC_NPROCESSORS_ONLN"),
                   bpf_jit_enable=_read_int(JIT_ENABLE),
                   bpf_stats_enabled=None if stats is None else stats == 1,
                   percpu_counter=has_percpu_element_counter(), cpu_model=cpu_model())


def element_counter(machine: Machine, prealloc: bool, lru: bool, map_max_entries: int) -> str:
    """How the map counts its elements, which is what a full NO_PREALLOC map
    pays for on every insert: a preallocated (or LRU) map has no counter (its
    free list is the limit); a NO_PREALLOC map an atomic_t, or from v6.1 a
    per-CPU counter when max_entries / 2 > online CPUs * 32 (whose exact
    comparison near max_entries sums every CPU's share)."""
    if prealloc or lru:
        return "none (preallocated: the free list is the limit)"
    if not machine.percpu_counter:
        return "atomic_t (this kernel has no per-CPU element counter)"
    if map_max_entries // 2 > machine.online_cpus * PERCPU_COUNTER_BATCH:
        return "percpu_counter"
    return (f"atomic_t (max_entries / 2 <= {machine.online_cpus} online CPUs * "
            f"{PERCPU_COUNTER_BATCH})")


def _cpu_list(text: str) -> set[int]:
    """ "0-3,8" -> {0, 1, 2, 3, 8}."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def siblings(cpu: int) -> set[int]:
    """The SMT siblings of ``cpu`` (itself included; {cpu} when unknown)."""
    path = CPU_SYS / f"cpu{cpu}" / "topology" / "thread_siblings_list"
    try:
        return _cpu_list(path.read_text()) | {cpu}
    except (OSError, ValueError):
        return {cpu}


def smt_pairs(cpus: list[int]) -> list[list[int]]:
    """Groups of the chosen CPUs that share a core (empty: none do)."""
    seen: list[list[int]] = []
    for cpu in cpus:
        group = sorted(siblings(cpu) & set(cpus))
        if len(group) > 1 and group not in seen:
            seen.append(group)
    return seen


def choose_cpus(counts: list[int], *, first: bool = False) -> dict[int, list[int]]:
    """k -> the k CPUs to use, for each k in ``counts``.

    One CPU per core first, siblings only when the cores run out, so that
    two CPUs means two cores where the machine has them.  With ``first``
    the CPUs are simply 0..k-1, as samples/bpf/map_perf_test pins its
    children (needed to compare with it)."""
    allowed = sorted(os.sched_getaffinity(0))
    for k in counts:
        if not 1 <= k <= len(allowed):
            raise UsageError("--cpus", f"{k} CPUs asked; this process may use "
                             f"{len(allowed)} ({','.join(map(str, allowed))})")
        if first and not set(range(k)) <= set(allowed):
            raise UsageError("--cpus", f"{k}: map_perf_test pins its children to CPUs "
                             f"0..{k - 1}, not all of which this process may use")
    if first:
        return {k: list(range(k)) for k in counts}
    cores, spare = [], []
    taken: set[int] = set()
    for cpu in allowed:
        (spare if cpu in taken else cores).append(cpu)
        taken |= siblings(cpu)
    order = cores + spare
    return {k: sorted(order[:k]) for k in counts}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" when it has none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else ""
