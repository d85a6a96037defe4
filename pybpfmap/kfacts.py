"""Which of the hash-map commits (:mod:`pybpfmap.commits`) a kernel has: probed
where the kernel can tell, from the version only where it cannot.

Kernels carry backports (Debian's 6.1.y has NO_EBUSY and HASH_MASK; a 5.10
built with the map_locked patches has MAP_LOCKED), so a version comparison
is a guess.  :func:`probe` asks the running kernel:

* BTF (``/sys/kernel/btf/vmlinux``, :mod:`pybpfmap.btf`): the members of
  ``struct bpf_htab`` — ``map_locked`` (MAP_LOCKED), ``ma`` (MEM_ALLOC),
  ``pcpu_ma`` (PERCPU_MEM_ALLOC) — and the type of ``struct bucket``'s
  ``raw_lock`` (``rqspinlock_t``: RQSPINLOCK, which also removed
  ``map_locked``: the resilient lock is then the re-entry guard);
* ``/proc/kallsyms`` where there is no BTF: ``resilient_queued_spin_lock_slowpath``
  / ``resilient_tas_spin_lock`` (RQSPINLOCK), ``bpf_mem_alloc`` (MEM_ALLOC);
* the verifier (``verifier=True``): a tracepoint program referencing a
  NO_PREALLOC hash map, loaded with the verifier log — refused with
  :data:`RT_REFUSAL` (RT_PREALLOC), loaded with :data:`UNSAFE_NOTE`, the line
  the verifier logs right after its WARN_ONCE (TIGHTEN), or loaded silently
  (WARN_REMOVED).  On 5.7-6.0 this prints that WARN in the kernel log once
  per boot, so only callers that declare the splat ask for it (``info``);
* RLIMIT_MEMLOCK charging (:func:`pybpfmap.memlock.charged_by_kernel`: NO_RLIMIT),
  memory-cgroup charging (:func:`pybpfmap.memcg.charges_maps`: MEMCG) and
  whether fdinfo ``memlock`` is real usage (:func:`pybpfmap.maps.memlock_is_usage`
  on a fresh NO_PREALLOC map: MEMORY_USAGE).

Everything else (HASH_MASK, NO_EBUSY, MISSED_STATS, RCU_FREE, ...) comes from
the version, marked :attr:`Source.VERSION`.  The host predicting for a test-VM
kernel it has not booted uses :meth:`KernelFacts.assumed_from`.
"""

from __future__ import annotations

import enum
import errno
import os
import re
from dataclasses import dataclass, field

from pybpfmap import bpfsys, memcg, memlock
from pybpfmap.btf import Btf, read_vmlinux
from pybpfmap.commits import (
    CHANGES,
    MAP_LOCKED,
    MEM_ALLOC,
    MEMCG,
    MEMORY_USAGE,
    NO_RLIMIT,
    PERCPU_MEM_ALLOC,
    RQSPINLOCK,
    RT_PREALLOC,
    TIGHTEN,
    WARN_REMOVED,
    Change,
)
from pybpfmap.maps import MapSpec, memlock_is_usage
from pybpfmap.records import to_json

REALTIME = "/sys/kernel/realtime"  # exists (and reads 1) on PREEMPT_RT kernels
KALLSYMS = "/proc/kallsyms"
RQSPINLOCK_SYMBOLS = ("resilient_queued_spin_lock_slowpath", "resilient_tas_spin_lock")
# What the verifier logs (kernel/bpf/verifier.c, check_map_prog_compatibility,
# 5.7-6.0) for a tracing program using a NO_PREALLOC hash map: on PREEMPT_RT
# the refusal (with EINVAL), else this note right after its WARN_ONCE.
RT_REFUSAL = "trace type programs can only use preallocated hash map"
UNSAFE_NOTE = "trace type programs with run-time allocated hash maps are unsafe"


class Source(enum.Enum):
    """Where a fact comes from."""

    PROBED = "probed"     # the running kernel said so
    VERSION = "version"   # assumed from the release number


def version(release: str) -> tuple[int, int]:
    """(major, minor) of a ``uname -r`` string such as "6.1.0-56-amd64"."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        raise ValueError(f"cannot read a kernel version from {release!r}")
    return int(m.group(1)), int(m.group(2))


def _v(t: tuple[int, ...]) -> str:
    return ".".join(map(str, t))


Stable = tuple[int, int, int]


def stable_version(banner: str, release: str) -> Stable | None:
    """The upstream stable release a kernel is built from, where it says:
    Debian's ``/proc/version`` (and bzImage banner) ends "Debian 6.1.176-1",
    Ubuntu's ``/proc/version_signature`` ends with it, and other kernels
    (Fedora's 6.17.7-300.fc43, a stable tree's 6.12.58) have it in the
    release itself.  None when nothing says (Debian's release is 6.1.0-50)."""
    # the kernel's own: the last one (the compiler's "(Debian 12.2.0-14)" comes first)
    found = re.findall(r"#\d+ .*Debian (\d+)\.(\d+)\.(\d+)", banner) or \
        re.findall(r"Ubuntu \S+ (\d+)\.(\d+)\.(\d+)\s*$", banner, re.M)
    if found:
        return int(found[-1][0]), int(found[-1][1]), int(found[-1][2])
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", release)
    if m is None or m.group(3) == "0":
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def running_banner() -> str:
    """``/proc/version`` and, where there is one, ``/proc/version_signature``."""
    out = []
    for path in ("/proc/version", "/proc/version_signature"):
        try:
            with open(path) as f:
                out.append(f.read().strip())
        except OSError:
            pass
    return "\n".join(out)


@dataclass(frozen=True)
class Fact:
    """Whether a kernel behaves as with ``change``, and how that was found."""

    change: Change
    present: bool
    source: Source
    how: str

    def describe(self) -> str:
        return (f"{self.change.commit} {'present' if self.present else 'absent'} "
                f"({self.source.value}: {self.how})")


def from_version(release: str, change: Change, stable: Stable | None = None) -> Fact:
    """``change`` assumed from the version: its mainline release, or a stable
    backport in the kernel's stable series (where the kernel's stable
    release is known: :func:`stable_version`)."""
    have = version(release)
    if have >= change.version:
        return Fact(change, True, Source.VERSION, f"version {_v(have)} >= "
                    f"{_v(change.version)}")
    port = next((b for b in change.backports if stable and b[:2] == stable[:2]), None)
    if port is not None and stable is not None:
        present = stable >= port
        return Fact(change, present, Source.VERSION, f"stable {_v(stable)} "
                    f"{'>=' if present else '<'} {_v(port)}, its backport")
    return Fact(change, False, Source.VERSION, f"version {_v(have)} < {_v(change.version)}"
                + ("" if stable or not change.backports else
                   " (the stable release is unknown: a backport cannot be seen)"))


@dataclass
class FactRecord:
    """One fact as records carry it (``info --json``'s ``facts``, stress runs)."""

    commit: str
    subject: str
    version: str
    present: bool
    source: Source
    how: str


@dataclass(frozen=True)
class KernelFacts:
    """Every :data:`pybpfmap.commits.CHANGES` fact about one kernel."""

    release: str
    preempt_rt: bool = False
    facts: dict[Change, Fact] = field(default_factory=dict)
    stable: Stable | None = None    # the upstream stable release, where known

    def fact(self, change: Change) -> Fact:
        return self.facts.get(change) or from_version(self.release, change, self.stable)

    def has(self, change: Change) -> bool:
        return self.fact(change).present

    def probed(self) -> list[Fact]:
        return [f for f in self.facts.values() if f.source is Source.PROBED]

    def assumed(self) -> list[Fact]:
        return [f for f in self.facts.values() if f.source is Source.VERSION]

    def records(self) -> list[FactRecord]:
        return [FactRecord(f.change.commit, f.change.subject, _v(f.change.version), f.present,
                           f.source, f.how) for f in self.facts.values()]

    def to_json(self) -> list[dict]:
        return to_json(self.records())

    def render(self) -> list[str]:
        """One line per fact: present or absent, probed or from the version, how."""
        return [f"{'+' if f.present else '-'} {f.change.commit} {f.change.subject}: "
                f"{f.source.value} ({f.how})" for f in self.facts.values()]

    @classmethod
    def assumed_from(cls, release: str, preempt_rt: bool = False,
                     stable: Stable | None = None) -> KernelFacts:
        """Every fact from the version: for a kernel that was not booted."""
        return cls(release, preempt_rt, {c: from_version(release, c, stable)
                                         for c in CHANGES}, stable)

    @classmethod
    def from_records(cls, release: str, preempt_rt: bool, records: list[FactRecord],
                     stable: Stable | None = None) -> KernelFacts:
        """The facts a kernel recorded (a guest's run, brought back); the
        changes it did not record from the version."""
        by_commit = {c.commit: c for c in CHANGES}
        facts = {c: from_version(release, c, stable) for c in CHANGES}
        for r in records:
            if r.commit in by_commit:
                c = by_commit[r.commit]
                facts[c] = Fact(c, r.present, r.source, r.how)
        return cls(release, preempt_rt, facts, stable)


def preempt_rt() -> bool:
    """PREEMPT_RT kernels have /sys/kernel/realtime (reading 1)."""
    try:
        with open(REALTIME) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _probed(change: Change, present: bool, how: str) -> Fact:
    return Fact(change, present, Source.PROBED, how)


def btf_facts(btf: Btf) -> list[Fact]:
    """MAP_LOCKED, MEM_ALLOC, PERCPU_MEM_ALLOC and RQSPINLOCK from ``struct
    bpf_htab`` (kernel/bpf/hashtab.c); none when it is not in the BTF."""
    members = btf.members("bpf_htab")
    if members is None:
        return []
    out = []
    bucket = btf.member_struct("bpf_htab", "buckets")
    lock = btf.members_of(bucket).get("raw_lock") if bucket is not None else None
    if lock is not None:
        out.append(_probed(RQSPINLOCK, lock == "rqspinlock_t",
                           f"BTF: struct bucket's raw_lock is {lock}"))
    rq = lock == "rqspinlock_t"
    if "map_locked" in members:
        out.append(_probed(MAP_LOCKED, True, "BTF: struct bpf_htab has member map_locked"))
    elif rq:
        # 4fa8d68aa53e removed map_locked: the resilient bucket lock is the re-entry guard.
        out.append(_probed(MAP_LOCKED, True, "BTF: no map_locked in struct bpf_htab, but its "
                           "bucket lock is rqspinlock_t, which took over the re-entry guard"))
    else:
        out.append(_probed(MAP_LOCKED, False, "BTF: struct bpf_htab has no member map_locked"))
    for change, member in ((MEM_ALLOC, "ma"), (PERCPU_MEM_ALLOC, "pcpu_ma")):
        out.append(_probed(change, member in members,
                           f"BTF: struct bpf_htab {'has' if member in members else 'has no'} "
                           f"member {member}"))
    return out


def kallsyms_facts(text: str) -> list[Fact]:
    """RQSPINLOCK and MEM_ALLOC from symbol names, where BTF cannot tell."""
    names = {line.split()[2] for line in text.splitlines() if len(line.split()) >= 3}
    if not names:
        return []
    rq = [s for s in RQSPINLOCK_SYMBOLS if s in names]
    return [
        _probed(RQSPINLOCK, bool(rq), f"kallsyms: {rq[0]}" if rq else
                f"kallsyms: no {' or '.join(RQSPINLOCK_SYMBOLS)}"),
        _probed(MEM_ALLOC, "bpf_mem_alloc" in names,
                "kallsyms: bpf_mem_alloc" if "bpf_mem_alloc" in names else
                "kallsyms: no bpf_mem_alloc"),
    ]


def verifier_facts(release: str) -> list[Fact]:
    """RT_PREALLOC, TIGHTEN, WARN_REMOVED from the verifier's answer to a
    tracepoint program that references a NO_PREALLOC hash map (root only;
    none when the map or the program cannot be tried)."""
    try:
        fd = bpfsys.map_create(bpfsys.MAP_TYPES["hash"], 4, 8, 16, bpfsys.F_NO_PREALLOC,
                               name="pybpfmap_kfact")
    except bpfsys.BpfSyscallError:
        return []
    prog = bpfsys.ld_map_fd(1, fd) + bpfsys.insn(0xB7, 0) + bpfsys.insn(0x95)  # r0 = 0; exit
    try:
        # Level 2: at level 1 a successful load's log is rewound to its statistics,
        # losing the note (do_check_common's pop_log, 5.10).
        pfd, log = bpfsys.prog_load(bpfsys.PROG_TYPE_TRACEPOINT, prog, name="pybpfmap_kfact",
                                    log_level=2)
        os.close(pfd)
        refused = False
    except bpfsys.ProgLoadError as e:
        if not (e.errno == errno.EINVAL and RT_REFUSAL in e.log):
            return []   # refused for another reason (no CAP_BPF...): the verifier did not say
        log, refused = e.log, True
    finally:
        os.close(fd)
    verifier = "verifier on a tracepoint program with a NO_PREALLOC hash map: "
    if refused:
        how = verifier + f'EINVAL "{RT_REFUSAL}"'
        return [_probed(RT_PREALLOC, True, how), _probed(TIGHTEN, True, how),
                _probed(WARN_REMOVED, False, how)]
    if UNSAFE_NOTE in log:
        how = verifier + f'loaded, logged "{UNSAFE_NOTE}" (after its WARN_ONCE)'
        return [_probed(TIGHTEN, True, how), _probed(WARN_REMOVED, False, how)]
    how = verifier + "loaded without a word"
    if version(release) >= TIGHTEN.version:
        return [_probed(WARN_REMOVED, True, how)]
    return [_probed(TIGHTEN, False, how)]


def accounting_facts() -> list[Fact]:
    """NO_RLIMIT, MEMCG and MEMORY_USAGE from the probes that exist."""
    out = []
    charged = memlock.charged_by_kernel()
    if charged is not None:
        out.append(_probed(NO_RLIMIT, not charged, "a map under RLIMIT_MEMLOCK 0 was "
                           + ("refused (EPERM)" if charged else "created")))
    cg = memcg.charges_maps()
    if cg is not None:
        out.append(_probed(MEMCG, cg, "a preallocated 4 MiB map " + ("moved" if cg else
                                                                     "did not move")
                           + " its memory cgroup's charge"))
    if charged:
        out.append(_probed(MEMORY_USAGE, False, "fdinfo memlock is the RLIMIT_MEMLOCK charge"))
    elif charged is False:
        spec = MapSpec("hash", False, 4, 8, 1024)
        try:
            with spec.create() as m:
                usage = memlock_is_usage(m.memlock(), spec)
        except Exception:   # noqa: BLE001 - any refusal: nothing probed
            return out
        out.append(_probed(MEMORY_USAGE, usage, "fdinfo memlock of an empty NO_PREALLOC map "
                           + ("is not" if usage else "is") + " the max_entries estimate"))
    return out


_cache: dict[bool, KernelFacts] = {}


def probe(release: str | None = None, verifier: bool = False) -> KernelFacts:
    """The running kernel's facts (cached per process).  ``verifier``: also
    ask the verifier (which WARNs once per boot on 5.7-6.0: see the module doc)."""
    if verifier in _cache or (not verifier and True in _cache):
        return _cache.get(verifier) or _cache[True]
    release = release or os.uname().release
    stable = stable_version(running_banner(), release)
    facts = {c: from_version(release, c, stable) for c in CHANGES}
    found = []
    btf = read_vmlinux()
    if btf is not None:
        found += btf_facts(btf)
    if not any(f.change is RQSPINLOCK for f in found):
        try:
            with open(KALLSYMS) as f:
                found += [k for k in kallsyms_facts(f.read())
                          if not any(g.change is k.change for g in found)]
        except OSError:
            pass
    if verifier:
        found += verifier_facts(release)
    found += accounting_facts()
    facts.update({f.change: f for f in found})
    _cache[verifier] = KernelFacts(release, preempt_rt(), facts, stable)
    return _cache[verifier]


def for_release(release: str) -> KernelFacts:
    """For code that has only a release string: the running kernel's probed
    facts when it is this kernel, else everything from the version."""
    if release == os.uname().release:
        return probe(release)
    return KernelFacts.assumed_from(release)
