"""The map kinds a stress run exercises, one row group each.

Every hash map type in both allocation modes (LRU maps exist preallocated
only: the kernel refuses BPF_F_NO_PREALLOC for them), plus the big-element
variant of the plain NO_PREALLOC hash: 2048-byte values make 48 + 8 + 2048 =
2104-byte elements, which come from kmalloc-4k (8 objects per 32 KiB slab),
so that an allocation under the bucket lock reaches SLUB's slow path (the
node's ``list_lock``) often — the chain of the seed commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pybpfmap.errors import UsageError
from pybpfmap.maps import MapSpec

MAX_ENTRIES = 1024
BIG_VALUE = 2048


@dataclass(frozen=True)
class MapKind:
    """One map kind: its name (``hash/no_prealloc``, ``hash/no_prealloc/2k``) and spec."""

    name: str
    spec: MapSpec
    note: str = ""


def _kind(type_: str, prealloc: bool, value_size: int = 8, suffix: str = "",
          note: str = "") -> MapKind:
    spec = MapSpec(type_, prealloc, 4, value_size, MAX_ENTRIES)
    return MapKind(spec.label + suffix, spec, note)


KINDS: tuple[MapKind, ...] = (
    _kind("hash", True),
    _kind("hash", False),
    _kind("hash", False, BIG_VALUE, "/2k", f"{BIG_VALUE}-byte values: kmalloc-4k elements"),
    _kind("percpu_hash", True),
    _kind("percpu_hash", False),
    _kind("lru_hash", True),
    _kind("lru_percpu_hash", True),
)
BY_NAME = {k.name: k for k in KINDS}


def select(names: Sequence[str] | None, param: str = "--types") -> list[MapKind]:
    """The kinds named: a map type (``hash``: all its kinds) or a kind name
    (``hash/no_prealloc``); all of them by default."""
    wanted = list(names or ())
    known = {k.spec.type for k in KINDS} | set(BY_NAME)
    for name in wanted:
        if name not in known:
            raise UsageError(param, f"{name!r} is not one of {', '.join(sorted(known))} "
                             "(LRU maps exist preallocated only)")
    return [k for k in KINDS if not wanted or k.name in wanted or k.spec.type in wanted]
