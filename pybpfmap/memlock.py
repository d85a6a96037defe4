"""RLIMIT_MEMLOCK: whether this kernel charges BPF map memory against it, and
raising it when it does (as BCC and libbpf do).

Before the memory-cgroup accounting of v5.11 (:data:`pybpfmap.commits.MEMCG`,
:data:`pybpfmap.commits.NO_RLIMIT`) a map's memory counts against the creating
user's RLIMIT_MEMLOCK (``bpf_charge_memlock()``), and a map that does not fit
is refused with EPERM — indistinguishable, by errno, from
"not allowed".  Whether the limit applies is probed, not assumed: a tiny map
is created with the soft limit lowered to 0 for a moment.
"""

from __future__ import annotations

import errno
import functools
import resource
from dataclasses import dataclass

from pybpfmap import bpfsys


@dataclass
class MemlockLimit:
    """RLIMIT_MEMLOCK of this process, and what the kernel does with it."""

    soft: int | None        # bytes; None = unlimited
    hard: int | None
    charged: bool | None    # map memory counts against it (None: could not probe)
    raised: bool = False    # pybpfmap raised it to unlimited
    note: str = ""

    def describe(self) -> str:
        def fmt(v: int | None) -> str:
            return "unlimited" if v is None else f"{v} bytes"
        charged = {None: "could not probe whether the kernel charges it",
                   True: "the kernel charges BPF map memory against it",
                   False: "the kernel does not charge BPF maps against it "
                          "(memory cgroup accounting)"}[self.charged]
        raised = "; raised to unlimited by pybpfmap" if self.raised else ""
        return f"soft {fmt(self.soft)}, hard {fmt(self.hard)}: {charged}{raised}"


def _limits() -> tuple[int | None, int | None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    inf = resource.RLIM_INFINITY
    return (None if soft == inf else soft), (None if hard == inf else hard)


@functools.cache
def charged_by_kernel() -> bool | None:
    """Whether BPF_MAP_CREATE fails with EPERM under a zero RLIMIT_MEMLOCK
    (pre-v5.11 charging); None when even that cannot be tried (not root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, hard))
    except (ValueError, OSError):
        return None
    try:
        fd = bpfsys.map_create(bpfsys.MAP_TYPES["hash"], 4, 8, 1, 0, name="pybpfmap_probe")
    except bpfsys.BpfSyscallError as e:
        return True if e.errno == errno.EPERM else None
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))
    import os

    os.close(fd)
    return False


_raised = False


def ensure_unlimited() -> MemlockLimit:
    """Raise RLIMIT_MEMLOCK to unlimited when the kernel charges maps against
    it (what BCC's map creation and libbpf's bump_rlimit_memlock do); report."""
    global _raised
    charged = charged_by_kernel()
    note = ""
    if charged and not _raised:
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK,
                               (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            _raised = True
        except (ValueError, OSError) as e:
            note = f"cannot raise it: {e}"
    soft, hard = _limits()
    return MemlockLimit(soft, hard, charged, _raised, note)


def current() -> MemlockLimit:
    """The limit as it is, without raising it."""
    soft, hard = _limits()
    return MemlockLimit(soft, hard, charged_by_kernel(), _raised)
