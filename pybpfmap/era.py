"""What each kernel era predicts for BPF hash maps, with the commits that make it so.

Whether a re-entrant map op deadlocks, returns -EBUSY or -EDEADLK, whether a
NO_PREALLOC map allocates under the bucket lock, and whether a tracing
program with one triggers a WARN is not something user space can ask the
kernel without provoking it — which is what ``pybpfmap stress`` then does, in
the test VM, and compares with the prediction here.  What the prediction
rests on is which commits the kernel has: a :class:`~pybpfmap.kfacts.KernelFacts`,
probed on the running kernel where it can tell (BTF, kallsyms, the verifier,
the memory accounting probes) and from the version only where it cannot
(:mod:`pybpfmap.kfacts`), so that a kernel with backports gets the prediction
its code earns.  Each :class:`Prediction` names the facts it rests on and
whether they were probed.

Every commit cited here is a checked :class:`pybpfmap.commits.Change`.
"""

from __future__ import annotations

import enum
import errno
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pybpfmap.commits import (
    HASH_MASK,
    LRU_EBUSY_LEAK,
    LRU_RQSPINLOCK,
    MAP_LOCKED,
    MAP_LOCKED_PREEMPT,
    MEM_ALLOC,
    MEMCG,
    MEMORY_USAGE,
    MISSED_STATS,
    NO_RLIMIT,
    PERCPU_MEM_ALLOC,
    PREALLOC,
    RCU_FREE,
    RQSPINLOCK,
    RT_PREALLOC,
    TIGHTEN,
    WARN_REMOVED,
    Change,
)
from pybpfmap.errors import errno_name
from pybpfmap.kfacts import RT_REFUSAL, Fact, KernelFacts
from pybpfmap.maps import MapSpec
from pybpfmap.splats import Allowed

# The one-time WARN that TIGHTEN added and WARN_REMOVED removed (kernel/bpf/verifier.c).
RUNTIME_ALLOC_WARN = "trace type BPF program uses run-time allocation"
# What the verifier says instead on PREEMPT_RT (RT_PREALLOC), with EINVAL, is
# RT_REFUSAL (pybpfmap.kfacts, which asks the verifier; re-exported here).


def _between(kernel: KernelFacts, since: Change, until: Change | None = None) -> bool:
    return kernel.has(since) and (until is None or not kernel.has(until))


@dataclass(frozen=True)
class Era:
    """A span of kernel releases in which hash maps behave one way."""

    name: str
    since: Change
    summary: str


ERAS: tuple[Era, ...] = (
    Era("4.6-5.6", PREALLOC, "preallocated by default; NO_PREALLOC allocates under the "
                             "bucket lock"),
    Era("5.7-5.10", TIGHTEN, "NO_PREALLOC in tracing programs WARNs (RT: refused); "
                             "no map_locked: re-entry deadlocks"),
    Era("5.11-6.0", MAP_LOCKED, "map_locked: re-entry gets -EBUSY; NO_PREALLOC still "
                                "allocates under the bucket lock"),
    Era("6.1-6.14", MEM_ALLOC, "bpf_mem_alloc: NO_PREALLOC no longer allocates under the "
                               "lock; re-entry gets -EBUSY"),
    Era("6.15+", RQSPINLOCK, "resilient bucket locks: re-entry gets -EDEADLK/-ETIMEDOUT"),
)


def era_of(kernel: KernelFacts) -> Era:
    """The era ``kernel``'s facts put it in (the latest whose first commit it has)."""
    found = [e for e in ERAS if kernel.has(e.since)]
    if not found:
        return Era("<4.6", PREALLOC, "before preallocation: every hash map allocates in "
                                     "the lock path")
    return found[-1]


class Expect(enum.Enum):
    """What a stress row is predicted to do."""

    PASS = "PASS"                  # runs the whole duration, every error explained
    DEADLOCK = "DEADLOCK"          # the guest (or one CPU of it) locks up
    MAY_DEADLOCK = "PASS or DEADLOCK"  # possible, depends on allocator state
    ERRNO = "errno"                # runs, and the named errnos are counted
    REFUSED = "refused at load"    # the verifier refuses the program

    @property
    def may_lock_up(self) -> bool:
        """Whether such a row may hang the kernel (it runs only in the test VM)."""
        return self in (Expect.DEADLOCK, Expect.MAY_DEADLOCK)


@dataclass(frozen=True)
class Prediction:
    """The era's prediction for one stress row, and why."""

    expect: Expect
    why: str
    errnos: tuple[int, ...] = ()      # for ERRNO: any of these counted; for REFUSED: this one
    changes: tuple[str, ...] = field(default=())  # the commits that make it so
    facts: tuple[Fact, ...] = field(default=())   # what it rests on, probed or assumed

    def basis(self) -> str:
        """"predicted from: <commit> present (probed: how); ..." """
        return "predicted from: " + "; ".join(f.describe() for f in self.facts)

    def describe(self) -> str:
        if self.expect is Expect.ERRNO:
            return " or ".join(map(errno_name, self.errnos)) + " counted"
        if self.expect is Expect.REFUSED:
            return f"refused at load ({'/'.join(map(errno_name, self.errnos))})"
        return self.expect.value

    def matches(self, outcome: str, errnos: Iterable[int]) -> bool:
        """Whether a row's ``outcome`` (PASS, DEADLOCK, REFUSED, FAIL) and the errnos
        it counted are what this predicts."""
        seen = set(errnos)
        if self.expect is Expect.PASS:
            return outcome == "PASS"
        if self.expect is Expect.DEADLOCK:
            return outcome == "DEADLOCK"
        if self.expect is Expect.MAY_DEADLOCK:
            return outcome in ("PASS", "DEADLOCK")
        if self.expect is Expect.ERRNO:
            return outcome == "PASS" and bool(seen & set(self.errnos))
        return outcome == "REFUSED" and seen == set(self.errnos)


def _cites(*changes: Change) -> tuple[str, ...]:
    return tuple(c.commit for c in changes)


def _on(kernel: KernelFacts, *changes: Change) -> tuple[Fact, ...]:
    """The facts a prediction rests on: the changes it asked ``kernel`` about."""
    return tuple(kernel.fact(c) for c in changes)


def allocator_prediction(kernel: KernelFacts, spec: MapSpec) -> Prediction:
    """Map updates from kprobes on spin_unlock (the seed's scenario), for ``spec``
    (PREEMPT_RT or not: ``kernel.preempt_rt``)."""
    if not spec.prealloc and kernel.preempt_rt and \
            _between(kernel, RT_PREALLOC, WARN_REMOVED):
        return Prediction(Expect.REFUSED, f'the verifier refuses it: "{RT_REFUSAL}" '
                          f"({RT_PREALLOC.cite()}; lifted by {WARN_REMOVED.cite()})",
                          (errno.EINVAL,), _cites(RT_PREALLOC, WARN_REMOVED),
                          _on(kernel, RT_PREALLOC, WARN_REMOVED))
    if not spec.prealloc and spec.percpu and not kernel.has(PERCPU_MEM_ALLOC):
        return Prediction(Expect.DEADLOCK, "an update of a new key calls alloc_percpu "
                          "(pcpu_lock) under the bucket lock; a kprobe at the entry of "
                          "_raw_spin_unlock_irqrestore that releases pcpu_lock runs with it "
                          "still held, and its update takes pcpu_lock again (also from the "
                          f"RCU callback that frees elements since {RCU_FREE.cite()}); "
                          f"gone with {PERCPU_MEM_ALLOC.cite()}",
                          changes=_cites(RCU_FREE, PERCPU_MEM_ALLOC),
                          facts=_on(kernel, PERCPU_MEM_ALLOC))
    if not spec.prealloc and not spec.percpu and not kernel.has(MEM_ALLOC):
        return Prediction(Expect.MAY_DEADLOCK, "an update of a new key calls kmalloc under "
                          "the bucket lock; it deadlocks when the kprobe fires in SLUB's "
                          "unlock of the same cache's node list_lock and the allocation "
                          "needs the slow path (likely with big elements, few per slab): "
                          f"the deadlock {PREALLOC.cite()} was about; gone with "
                          f"{MEM_ALLOC.cite()}", changes=_cites(PREALLOC, MEM_ALLOC),
                          facts=_on(kernel, MEM_ALLOC))
    why = ("preallocated elements come from a per-CPU free list: nothing is allocated "
           f"under the bucket lock ({PREALLOC.cite()})" if spec.prealloc else
           f"NO_PREALLOC elements come from bpf_mem_alloc's per-CPU caches "
           f"({MEM_ALLOC.cite()}, {PERCPU_MEM_ALLOC.cite()})")
    return Prediction(Expect.PASS, why + "; kprobe programs never nest into each other "
                      "(bpf_prog_active), so no re-entry error either",
                      changes=_cites(PREALLOC, MEM_ALLOC),
                      facts=() if spec.prealloc else _on(kernel, MEM_ALLOC, PERCPU_MEM_ALLOC))


def reentry_prediction(kernel: KernelFacts, spec: MapSpec | None = None) -> Prediction:
    """A raw_tp program and a kprobe program updating one key of ``spec`` while the
    other holds the bucket lock.  Both are tracing programs: on PREEMPT_RT 5.7-6.0
    the verifier refuses a NO_PREALLOC map in them, as in the allocator scenario."""
    if spec is not None and not spec.prealloc and kernel.preempt_rt and \
            _between(kernel, RT_PREALLOC, WARN_REMOVED):
        return allocator_prediction(kernel, spec)
    if not kernel.has(MAP_LOCKED):
        return Prediction(Expect.DEADLOCK, "nothing stops the nested update from taking the "
                          "bucket lock its own CPU holds: an AA deadlock with interrupts "
                          f"off (fixed by {MAP_LOCKED.cite()})", changes=_cites(MAP_LOCKED),
                          facts=_on(kernel, MAP_LOCKED))
    if not kernel.has(RQSPINLOCK):
        return Prediction(Expect.ERRNO, f"the per-CPU map_locked counter refuses the nested "
                          f"update with -EBUSY ({MAP_LOCKED.cite()})", (errno.EBUSY,),
                          _cites(MAP_LOCKED), _on(kernel, MAP_LOCKED, RQSPINLOCK))
    return Prediction(Expect.ERRNO, "the resilient bucket lock detects the AA deadlock "
                      f"(-EDEADLK) or gives up after its timeout (-ETIMEDOUT) "
                      f"({RQSPINLOCK.cite()})", (errno.EDEADLK, errno.ETIMEDOUT),
                      _cites(RQSPINLOCK), _on(kernel, RQSPINLOCK))


def nmi_prediction(kernel: KernelFacts, spec: MapSpec, other_slot: bool = False
                   ) -> Prediction:
    """A tracepoint program in NMI context (``nmi:nmi_handler``) updating a key
    of ``spec`` while a raw_tp program on the interrupted CPU may be inside its
    update of key K: the same key, or (``other_slot``) a key of K's bucket on
    another map_locked counter (a map of fewer buckets than counters)."""
    if not spec.prealloc and kernel.preempt_rt and \
            _between(kernel, RT_PREALLOC, WARN_REMOVED):
        return allocator_prediction(kernel, spec)   # a tracing program: refused
    if not kernel.has(MAP_LOCKED):
        return Prediction(Expect.DEADLOCK, "the NMI's update spins on the bucket lock its "
                          "own CPU holds (the interrupted update): an AA deadlock in NMI "
                          f"context (the guard came with {MAP_LOCKED.cite()})",
                          changes=_cites(MAP_LOCKED), facts=_on(kernel, MAP_LOCKED))
    if spec.lru and not kernel.has(LRU_RQSPINLOCK):
        return Prediction(Expect.MAY_DEADLOCK, "an LRU update pops its node under the LRU "
                          "lists' raw spinlock before it takes the bucket lock, and the "
                          "holder's delete pushes it back under the same lock: an NMI "
                          "landing there spins on it for ever (no map_locked guard on the "
                          "LRU locks until " + LRU_RQSPINLOCK.cite() + "); one landing in "
                          "the bucket lock gets the bucket guard's error",
                          changes=_cites(MAP_LOCKED, LRU_RQSPINLOCK),
                          facts=_on(kernel, MAP_LOCKED, LRU_RQSPINLOCK))
    if not spec.prealloc and not kernel.has(MEM_ALLOC):
        return Prediction(Expect.MAY_DEADLOCK, "map_locked refuses the NMI's update of the "
                          "held bucket with -EBUSY, but an NMI landing anywhere else allocates "
                          "its element with kmalloc/alloc_percpu in NMI context, where SLUB's "
                          "and the per-CPU allocator's locks may be held by the interrupted "
                          f"code (NMI-safe allocation came with {MEM_ALLOC.cite()})",
                          (errno.EBUSY,), _cites(MAP_LOCKED, MEM_ALLOC),
                          _on(kernel, MAP_LOCKED, MEM_ALLOC))
    if not kernel.has(RQSPINLOCK):
        if other_slot and not kernel.has(HASH_MASK):
            return Prediction(Expect.DEADLOCK, "the NMI's key is in the held bucket but "
                              "counts on another map_locked slot (hash & 7 with fewer than "
                              "8 buckets), so the guard lets it spin on the held lock: an AA "
                              f"deadlock in NMI context (fixed by {HASH_MASK.cite()})",
                              changes=_cites(MAP_LOCKED, HASH_MASK),
                              facts=_on(kernel, MAP_LOCKED, HASH_MASK))
        slot = (f"; its key's map_locked slot is the held bucket's ({HASH_MASK.cite()})"
                if other_slot else "")
        return Prediction(Expect.ERRNO, "the per-CPU map_locked counter refuses the NMI's "
                          f"update of the held bucket with -EBUSY ({MAP_LOCKED.cite()})"
                          + slot, (errno.EBUSY,), _cites(MAP_LOCKED, HASH_MASK),
                          _on(kernel, MAP_LOCKED, RQSPINLOCK,
                              *((HASH_MASK,) if other_slot else ())))
    lru = (f"; an LRU list lock held by the interrupted update fails the NMI's pop, which "
           f"returns -ENOMEM ({LRU_RQSPINLOCK.cite()})" if spec.lru else "")
    return Prediction(Expect.ERRNO, "the resilient bucket lock sees its own CPU hold it and "
                      "fails the NMI's update with -EDEADLK at once (-ETIMEDOUT only when "
                      "another CPU's holder stalls past the lock's timeout: 250 ms, or 1 s "
                      f"in the spin fallback a hypervisor guest takes) ({RQSPINLOCK.cite()})"
                      + lru, (errno.EDEADLK, errno.ETIMEDOUT, *((errno.ENOMEM,) if spec.lru
                                                               else ())),
                      _cites(RQSPINLOCK, *((LRU_RQSPINLOCK,) if spec.lru else ())),
                      _on(kernel, RQSPINLOCK, *((LRU_RQSPINLOCK,) if spec.lru else ())))


# The bucket lock's unlock function, whose entry runs with the lock still held:
# raw_spin_unlock_irqrestore in htab_unlock_bucket until NO_EBUSY made it
# raw_spin_unlock + local_irq_restore (backported to Debian's 6.1.y, so which
# one a kernel calls is found by trying both); since RQSPINLOCK the bucket lock
# is released by an inlined res_spin_unlock, which takes no kprobe.
BUCKET_UNLOCKS = ("_raw_spin_unlock", "_raw_spin_unlock_irqrestore")


def reentry_targets(kernel: KernelFacts, spec: MapSpec) -> list[str]:
    """Kernel functions that run while a map update holds the bucket lock, in
    the order to try them: a kprobe there runs inside the update.

    ``lookup_elem_raw`` (the update's look-up of the old element, under the
    lock, for every hash map type in every era), ``alloc_htab_elem`` (the new
    element, under the lock; LRU maps take theirs before locking), then the
    bucket unlock function of the eras before RQSPINLOCK.  Both static
    functions are out of line and traceable in Debian's 5.10, 6.1, 6.12 and
    7.3 builds; whether they are here is probed (available_filter_functions).

    Never the unlock functions for LRU kinds: an LRU update pops its element
    (``prealloc_lru_pop``) before ``htab_lock_bucket``, under the LRU lists'
    own raw spinlocks, released by the same ``_raw_spin_unlock_irqrestore``
    (``bpf_common_lru_pop_free``).  A kprobe there would run with the CPU's
    LRU local-list lock held, outside ``map_locked``'s guard, and its nested
    pop would spin on that lock: a deadlock on a lock this scenario is not
    about, in every era before the LRU locks became resilient
    (:data:`pybpfmap.commits.LRU_RQSPINLOCK`); docs/eras.md has the source lines."""
    targets = ["lookup_elem_raw"] + ([] if spec.lru else ["alloc_htab_elem"])
    if not kernel.has(RQSPINLOCK) and not spec.lru:
        targets += BUCKET_UNLOCKS
    return targets


def explain_error(kernel: KernelFacts, spec: MapSpec, op: str, err: int,
                  failed_updates: int = 0, count: int = 0) -> str | None:
    """Why ``op`` on ``spec`` may fail with errno ``err`` inside a
    tracing program on this kernel; None when the era does not explain it.

    ``failed_updates``/``count``: an ENOENT on lookup/delete is explained
    when no more of them happened than updates failed (the element was never
    inserted).  The writers scenario's inserts (op ``insert``) are
    :func:`explain_user_error`'s."""
    if op == "insert":
        return _writers_error(kernel, spec, op, err)
    if err == errno.EBUSY and op in ("update", "delete") and \
            _between(kernel, MAP_LOCKED, RQSPINLOCK):
        return f"re-entrant op on a bucket lock this CPU holds is refused: {MAP_LOCKED.cite()}"
    if err in (errno.EDEADLK, errno.ETIMEDOUT) and op in ("update", "delete") and \
            kernel.has(RQSPINLOCK):
        return f"the resilient bucket lock detected a deadlock or timed out: {RQSPINLOCK.cite()}"
    if err == errno.ENOMEM and op == "update" and spec.lru:
        if kernel.has(LRU_RQSPINLOCK):
            return ("an LRU list lock held on this CPU by the interrupted update fails the "
                    f"nested pop, and the update returns -ENOMEM: {LRU_RQSPINLOCK.cite()}")
        if kernel.has(MAP_LOCKED) and not kernel.has(LRU_EBUSY_LEAK):
            return ("each LRU update refused with -EBUSY leaked the node it had popped, until "
                    f"none was left: fixed by {LRU_EBUSY_LEAK.cite()}")
    if err == errno.ENOMEM and op == "update" and not spec.prealloc:
        if kernel.has(MEM_ALLOC):
            return ("a non-preallocated map takes new elements from bpf_mem_alloc's "
                    "per-CPU cache, refilled asynchronously; in a tracing context it may be "
                    f"empty: {MEM_ALLOC.cite()}")
        return ("a non-preallocated map allocates each new element with GFP_ATOMIC, which "
                f"may fail under memory pressure (before {MEM_ALLOC.cite()})")
    if err == errno.ENOENT and op in ("lookup", "delete") and count <= failed_updates:
        return "the update before it failed, so the element was never inserted"
    return None


def expected_splats(kernel: KernelFacts, specs: Iterable[MapSpec]) -> list[Allowed]:
    """Splats this era explains for tracing programs on these maps
    (:func:`no_prealloc_tracing_splats` when one of them is NO_PREALLOC)."""
    if any(not s.prealloc for s in specs):
        return no_prealloc_tracing_splats(kernel)
    return []


def no_prealloc_tracing_splats(kernel: KernelFacts) -> list[Allowed]:
    """Splats this era explains for a tracing program that uses a
    non-preallocated hash map: the verifier's WARN_ONCE on 5.7-6.0 (not on
    PREEMPT_RT, which refuses the program instead), once per boot."""
    if not kernel.preempt_rt and _between(kernel, TIGHTEN, WARN_REMOVED):
        return [Allowed(r"WARNING: .* at kernel/bpf/verifier\.c:\d+", times=1,
                        message=re.escape(RUNTIME_ALLOC_WARN),
                        why=f"{RUNTIME_ALLOC_WARN!r}: {TIGHTEN.cite()}")]
    return []


def kprobe_recursion_misses_counted(kernel: KernelFacts) -> bool:
    """Whether a kprobe program's skipped runs show in ``recursion_misses``:
    before MISSED_STATS they are not counted (the field reads 0 regardless)."""
    return kernel.has(MISSED_STATS)


def memlock_is_real(kernel: KernelFacts) -> bool:
    """Whether fdinfo ``memlock`` is real usage (else the max_entries estimate)."""
    return kernel.has(MEMORY_USAGE)


def expectations(kernel: KernelFacts) -> list[str]:
    """What this era predicts, for a report's header, each with its commit."""
    e = era_of(kernel)
    out = [f"era {e.name}: {e.summary}"]
    r = reentry_prediction(kernel)
    out.append(f"re-entry into a held bucket lock: {r.describe()}: {r.why}")
    if _between(kernel, TIGHTEN, WARN_REMOVED):
        out.append(f'NO_PREALLOC maps in tracing programs WARN once "{RUNTIME_ALLOC_WARN}" '
                   f"(PREEMPT_RT: refused with EINVAL): {TIGHTEN.cite()}")
    elif kernel.has(WARN_REMOVED):
        out.append(f"NO_PREALLOC maps are allowed in tracing programs: {WARN_REMOVED.cite()}")
    if not kernel.has(MEMCG):
        out.append(f"map memory is charged to RLIMIT_MEMLOCK, not to the memory cgroup "
                   f"(until {MEMCG.cite()} and {NO_RLIMIT.cite()})")
    if not kernel.has(MEMORY_USAGE):
        out.append(f"fdinfo memlock is an estimate from max_entries (real since "
                   f"{MEMORY_USAGE.cite()})")
    if kernel.has(MISSED_STATS):
        out.append(f"skipped (nested) kprobe runs count in recursion_misses: "
                   f"{MISSED_STATS.cite()}")
    else:
        out.append(f"recursion_misses does not count kprobe programs (not before "
                   f"{MISSED_STATS.cite()})")
    probed = kernel.probed()
    out.append(f"facts probed on this kernel: {', '.join(f.change.commit for f in probed)}; "
               f"the other {len(kernel.assumed())} from the version" if probed else
               "every fact from the version (this kernel was not probed)")
    return out


# --- the writers scenario: a program's inserts beside bpf(2) writers on every CPU ---

def writers_prediction(kernel: KernelFacts, spec: MapSpec) -> Prediction:
    """A raw_tp program (sys_enter, one CPU) and an XDP program (the veth
    workload's softirq) inserting keys into ``spec``'s map while bpf(2)
    writers on every CPU update, delete, batch-delete and
    garbage-collect keys of the same range.  No op nests into another on its
    CPU, so every era runs it; what differs is which errors it explains."""
    if not spec.prealloc and kernel.preempt_rt and \
            _between(kernel, RT_PREALLOC, WARN_REMOVED):
        return allocator_prediction(kernel, spec)   # a tracing program: refused
    cited: list[Change] = []
    why = ["a bpf(2) map op runs with bpf_prog_active raised (bpf_disable_instrumentation), "
           "so no kprobe program runs inside it"
           + (f" (the skipped runs count in recursion_misses: {MISSED_STATS.cite()})"
              if kernel.has(MISSED_STATS) else ""),
           "the raw_tp program runs at syscall entry and the XDP program in softirq, never "
           "inside another map op on their CPU, which holds the bucket lock with interrupts "
           "off; writers on the other CPUs only wait for that lock"]
    if kernel.has(MISSED_STATS):
        cited.append(MISSED_STATS)
    if _between(kernel, MAP_LOCKED, RQSPINLOCK) and not kernel.has(MAP_LOCKED_PREEMPT):
        why.append("but a task preempted after raising its bucket's map_locked counter and "
                   "before locking makes the other task's op on that CPU fail with -EBUSY "
                   f"({MAP_LOCKED.cite()}; closed by {MAP_LOCKED_PREEMPT.cite()})")
        cited += [MAP_LOCKED, MAP_LOCKED_PREEMPT]
    elif _between(kernel, MAP_LOCKED, RQSPINLOCK):
        why.append("the bucket's map_locked counter is raised with preemption off, so no "
                   f"-EBUSY between two tasks either ({MAP_LOCKED_PREEMPT.cite()})")
        cited.append(MAP_LOCKED_PREEMPT)
    if kernel.has(RQSPINLOCK):
        why.append("a waiter on the resilient bucket lock may give up with -ETIMEDOUT "
                   f"({RQSPINLOCK.cite()})")
        cited.append(RQSPINLOCK)
    why.append("the other errors say that the map was full (-E2BIG), a key there already "
               "(-EEXIST) or gone (-ENOENT)")
    return Prediction(Expect.PASS, "; ".join(why), changes=_cites(*cited),
                      facts=_on(kernel, MAP_LOCKED_PREEMPT)
                      if _between(kernel, MAP_LOCKED, RQSPINLOCK) else ())


def explain_user_error(kernel: KernelFacts, spec: MapSpec, op: str, err: int) -> str | None:
    """Why the writers scenario's user-space op ``op`` ("user update", "user
    delete", "user batch", "user gc") on ``spec`` may fail with errno ``err``
    on this kernel: a key gone or the end of the map (ENOENT), a full map
    (E2BIG), the allocator (ENOMEM), the era's bucket lock (EBUSY, EDEADLK,
    ETIMEDOUT); None when the era does not explain it."""
    if not op.startswith("user "):
        return None
    return _writers_error(kernel, spec, op, err)


def _writers_error(kernel: KernelFacts, spec: MapSpec, op: str, err: int) -> str | None:
    """The writers scenario's errors: the program's BPF_NOEXIST inserts
    (``insert``) and user space's ops (``user update`` with BPF_ANY, ``user
    delete``, ``user batch``: BPF_MAP_LOOKUP_AND_DELETE_BATCH, ``user gc``: a
    BPF_MAP_GET_NEXT_KEY walk deleting what it finds), over a key range larger
    than the map (kernel/bpf/hashtab.c, checked in 5.10, 6.1 and 7.3)."""
    what = op.removeprefix("user ")
    if err == errno.ENOENT and what in ("delete", "gc") and op != what:
        return "the key was gone: another writer, a batch or the GC had deleted it first"
    if err == errno.ENOENT and what == "batch" and op != what:
        return ("the batch reached the end of the map: the kernel says so with -ENOENT and "
                "still returns the elements it moved (the next batch starts over)")
    if err == errno.EEXIST and op == "insert":
        return ("the key was there already (an earlier insert, or a writer's update): "
                "BPF_NOEXIST refuses it")
    if err == errno.E2BIG and what in ("insert", "update") and not spec.lru:
        if spec.prealloc:
            return ("the map was full: every one of its max_entries preallocated elements was "
                    "in use, so an insert of a new key found the free list empty "
                    f"(alloc_htab_elem: -E2BIG; {PREALLOC.cite()}); the key range is larger "
                    "than the map")
        return ("the map was full: its element count had reached max_entries, so an insert "
                "of a new key is refused (alloc_htab_elem: -E2BIG); the key range is larger "
                "than the map")
    if err == errno.ENOMEM and what in ("insert", "update"):
        if spec.lru:
            leak = (f"; -EBUSY refusals leak the nodes they popped until {LRU_EBUSY_LEAK.cite()}"
                    if _between(kernel, MAP_LOCKED, LRU_EBUSY_LEAK)
                    and not kernel.has(MAP_LOCKED_PREEMPT) else "")
            return ("an LRU insert found no node to reuse: this CPU's free list, the global "
                    "lists' shrink and every other CPU's free and pending nodes were empty, "
                    "the nodes being held by the other writers' inserts "
                    "(bpf_common_lru_pop_free: -ENOMEM)" + leak)
        if not spec.prealloc:
            return explain_error(kernel, spec, "update", err)   # the allocator's
    if err == errno.EBUSY and _between(kernel, MAP_LOCKED, RQSPINLOCK) and \
            not kernel.has(MAP_LOCKED_PREEMPT):
        return ("a task preempted after raising its bucket's map_locked counter and before "
                "taking the lock makes this CPU's next op on that counter fail "
                f"({MAP_LOCKED.cite()}; closed by {MAP_LOCKED_PREEMPT.cite()})")
    if err in (errno.EDEADLK, errno.ETIMEDOUT) and kernel.has(RQSPINLOCK):
        return ("the resilient bucket lock gave up waiting (timeout) or saw a deadlock: "
                f"{RQSPINLOCK.cite()}")
    return None
