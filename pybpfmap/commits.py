"""The kernel commits that changed what pybpfmap sees in BPF hash maps.

Each :class:`Change` was checked against the kernel source (Debian's
``linux-source`` packages of 5.10, 6.1, 6.12, 7.2 and 7.3): its id, its subject and
the first mainline release that contains it (a commit record quoting id and
subject, and the code present in that release's source and absent in the one
before).  What each commit means for a kernel era is :mod:`pybpfmap.era`'s
business; this module is only the record, so that every layer can cite a
commit without importing the era table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Change:
    """A kernel commit that changed what pybpfmap sees."""

    commit: str
    subject: str
    version: tuple[int, int]
    # The first release of each stable series that carries it as a backport
    # (from Debian's changelogs, which list every stable release's commits).
    backports: tuple[tuple[int, int, int], ...] = ()

    def cite(self) -> str:
        """drgn style: Linux kernel commit X ("subject") (in vA.B)."""
        return (f'Linux kernel commit {self.commit} ("{self.subject}") '
                f"(in v{self.version[0]}.{self.version[1]})")


PREALLOC = Change("6c9059817432", "bpf: pre-allocate hash map elements", (4, 6))
RCU_FREE = Change("8a37963c7ac9", "bpf: Remove recursion prevention from rcu free callback",
                  (5, 7))
TIGHTEN = Change("94dacdbd5d2d", "bpf: Tighten the requirements for preallocated hash maps",
                 (5, 7))
RT_PREALLOC = Change("2ed905c521e5", "bpf: Enforce preallocation for instrumentation "
                     "programs on RT", (5, 7))
MAP_LOCKED = Change("20b6cc34ea74", "bpf: Avoid hashtab deadlock with map_locked", (5, 11))
MEMCG = Change("d5299b67dd59", "bpf: Memcg-based memory accounting for bpf maps", (5, 11))
NO_RLIMIT = Change("755e5d55367a", "bpf: Eliminate rlimit-based memory accounting for "
                   "hashtab maps", (5, 11))
RECURSION_MISSES = Change("9ed9e9ba2337", "bpf: Count the number of times recursion was "
                          "prevented", (5, 12))
MEM_ALLOC = Change("fba1a1c6c912", "bpf: Convert hash map to bpf_mem_alloc.", (6, 1))
PERCPU_MEM_ALLOC = Change("ee4ed53c5eb6", "bpf: Convert percpu hash map to per-cpu "
                          "bpf_mem_alloc.", (6, 1))
WARN_REMOVED = Change("96da3f7d489d", "bpf: Remove tracing program restriction on map types",
                      (6, 1))
RAW_TP_GUARD = Change("05b24ff9b2cf", "bpf: Prevent bpf program recursion for raw "
                      "tracepoint probes", (6, 1), backports=((6, 0, 10),))
# Before it, on preemptible kernels (migrate_disable() no longer disables
# preemption since 5.11), two tasks on one CPU could -EBUSY each other with no
# second program involved.  Also in 6.0.3, 5.19.17 and 5.15.75.
MAP_LOCKED_PREEMPT = Change("2775da216287", "bpf: Disable preemption when increasing "
                            "per-cpu map_locked", (6, 1),
                            backports=((6, 0, 3), (5, 19, 17), (5, 15, 75)))
HASH_MASK = Change("9f907439dc80", "bpf: hash map, avoid deadlock with suitable hash mask",
                   (6, 2), backports=((6, 1, 9),))
MEMORY_USAGE = Change("304849a27b34", "bpf: hashtab memory usage", (6, 4))
# Before it, an LRU update refused with -EBUSY by map_locked leaked the node it
# had popped: enough of them and every update gets -ENOMEM.  Also in 6.1.31
# and 5.15.115; 5.10 has no map_locked, so nothing to leak.
LRU_EBUSY_LEAK = Change("b34ffb0c6d23", "bpf: fix a memory leak in the LRU and LRU_PERCPU "
                        "hash maps", (6, 4), backports=((6, 1, 31), (5, 15, 115)))
NO_EBUSY = Change("d35381aa73f7", "bpf: Fix unnecessary -EBUSY from htab_lock_bucket", (6, 7),
                  backports=((6, 1, 63),))
MISSED_STATS = Change("dd8657894c11", "bpf: Count missed stats in trace_call_bpf", (6, 7))
# A per-CPU value over PCPU_MIN_UNIT_SIZE (32 KiB) is refused with E2BIG by the
# map's alloc_check; before it, the per-CPU allocator failed it with ENOMEM.
# Backported to the stable series (Debian's 5.10.262 and 6.1.190 have it).
PCPU_VALUE_CHECK = Change("1d244784be6b", "bpf: Check percpu map value size first", (6, 12),
                          backports=((6, 1, 113), (5, 10, 227)))
RQSPINLOCK = Change("4fa8d68aa53e", "bpf: Convert hashtab.c to rqspinlock", (6, 15))
# The LRU lists' locks (bpf_lru_list.c) become rqspinlocks too: until then they
# are raw spinlocks, released by the out-of-line _raw_spin_unlock*.  Also in
# 7.1.y (queued for 7.1.5).
LRU_RQSPINLOCK = Change("89edbdfc5d03", "bpf: Fix NMI/tracepoint re-entry deadlock on lru "
                        "locks", (7, 2))

ELEM_COUNT = Change("86fe28f7692d", "bpf: Optimize element count in non-preallocated "
                    "hash map.", (6, 1))
# Not a hash map change (so not in CHANGES, the kernel facts): the selftests'
# `bench htab-mem`, pybpfmap bench's second peer (net-next took it on
# 2023-07-14, after v6.5-rc1; 6.1's source has no benchs/bench_htab_mem.c,
# 6.12's has).
HTAB_MEM_BENCH = Change("fd283ab196a8", "selftests/bpf: Add benchmark for bpf memory "
                        "allocator", (6, 6))

CHANGES: tuple[Change, ...] = (
    PREALLOC, RCU_FREE, TIGHTEN, RT_PREALLOC, MAP_LOCKED, MEMCG, NO_RLIMIT, RECURSION_MISSES,
    MEM_ALLOC, PERCPU_MEM_ALLOC, WARN_REMOVED, RAW_TP_GUARD, MAP_LOCKED_PREEMPT, HASH_MASK,
    MEMORY_USAGE, LRU_EBUSY_LEAK, NO_EBUSY, MISSED_STATS, PCPU_VALUE_CHECK, RQSPINLOCK,
    LRU_RQSPINLOCK, ELEM_COUNT)
