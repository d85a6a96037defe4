"""The map kinds a stress run exercises, one row group each.

Every hash map type in both allocation modes (LRU maps exist preallocated
only: the kernel refuses BPF_F_NO_PREALLOC for them), plus the big-element
variant of the plain NO_PREALLOC hash: 2048-byte values make 48 + 8 + 2048 =
2104-byte elements, which come from kmalloc-4k (8 objects per 32 KiB slab),
so that an allocation under the bucket lock reaches SLUB's slow path (the
node's ``list_lock``) often — the chain of the seed commit.
"""

from __future__ import annotations

import re
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
# A kind of your own: TYPE/ALLOC with any of /kKEY /vVALUE /nMAX_ENTRIES (bytes, entries)
CUSTOM = re.compile(r"(?P<type>[a-z_]+)/(?P<alloc>prealloc|no_prealloc)"
                    r"(?:/k(?P<k>\d+))?(?:/v(?P<v>\d+))?(?:/n(?P<n>\d+))?")


def custom(spec: MapSpec) -> MapKind:
    """The kind of ``spec``, named so that :func:`select` reads it back:
    ``hash/no_prealloc/k4/v896/n32768``."""
    return MapKind(f"{spec.label}/k{spec.key_size}/v{spec.value_size}/n{spec.max_entries}",
                   spec, "your map spec")


def _parse(name: str, param: str) -> MapKind | None:
    m = CUSTOM.fullmatch(name)
    if m is None or not any(m.group(g) for g in "kvn"):
        return None
    spec = MapSpec(m["type"], m["alloc"] == "prealloc", int(m["k"] or 4), int(m["v"] or 8),
                   int(m["n"] or MAX_ENTRIES))
    if spec.lru and not spec.prealloc:
        raise UsageError(param, f"{name!r}: LRU maps exist preallocated only")
    return MapKind(name, spec, "your map spec")


def select(names: Sequence[str] | None, param: str = "--types") -> list[MapKind]:
    """The kinds named: a map type (``hash``: all its kinds), a kind name
    (``hash/no_prealloc``) or a kind of your own (:data:`CUSTOM`); all the
    built-in ones by default."""
    wanted = list(names or ())
    known = {k.spec.type for k in KINDS} | set(BY_NAME)
    own = {}
    for name in wanted:
        if name not in known:
            kind = _parse(name, param)
            if kind is None:
                raise UsageError(param, f"{name!r} is not one of {', '.join(sorted(known))} "
                                 "nor TYPE/ALLOC[/kKEY][/vVALUE][/nENTRIES] (LRU maps exist "
                                 "preallocated only)")
            own[name] = kind
    return [k for k in KINDS if not wanted or k.name in wanted or k.spec.type in wanted] \
        + [own[n] for n in wanted if n in own]
