"""``pybpfmap maps``: create each kind of hash map and show what the kernel charges.

For every map: the kernel's map_flags (bpf_map_info), the memory charged
(fdinfo ``memlock``) when empty, when filled to max_entries and after every
element was deleted, the creation time, and what a new key does to a full
map (E2BIG, or an eviction for LRU maps).  A preallocated map charges its
memory up front; a BPF_F_NO_PREALLOC map grows with its contents.
"""

from __future__ import annotations

import argparse
import sys
import time

from pybpfmap import bpfsys
from pybpfmap.errors import KernelError, errno_name
from pybpfmap.maps import LRU_PREALLOC_ONLY, TYPES, MapSpec
from pybpfmap.output import Progress, human_bytes, print_json, table

# Linux kernel commit 304849a27b34 ("bpf: hashtab memory usage") (in v6.4):
# before it, fdinfo memlock was an estimate computed from max_entries.
MEMLOCK_NOTE = ("memlock is the kernel's fdinfo figure; it reports real usage for "
                "non-preallocated maps since Linux kernel commit 304849a27b34 "
                "(\"bpf: hashtab memory usage\") (in v6.4), an estimate from "
                "max_entries before")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("maps", help="create each hash map kind; show flags and memory charged",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--type", dest="types", action="append", choices=TYPES, metavar="TYPE",
                   help=f"map type, repeatable (default: all of {', '.join(TYPES)})")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--prealloc", dest="modes", action="store_const", const=[True],
                      help="only preallocated maps (the kernel default)")
    mode.add_argument("--no-prealloc", dest="modes", action="store_const", const=[False],
                      help="only BPF_F_NO_PREALLOC maps")
    p.add_argument("--max-entries", type=int, default=10000, metavar="N")
    p.add_argument("--key-size", type=int, default=4, metavar="N")
    p.add_argument("--value-size", type=int, default=8, metavar="N")
    p.add_argument("--map-flags", type=bits, default=0, metavar="BITS",
                   help="extra raw map_flags bits to OR in (e.g. 0x2 BPF_F_NO_COMMON_LRU), "
                   "to see what the kernel accepts")
    p.add_argument("--json", action="store_true", help="print a JSON list of records")
    p.set_defaults(func=run)


def bits(text: str) -> int:
    """An integer in any base Python accepts (0x2, 2, 0b10)."""
    return int(text, 0)


def specs_for(args: argparse.Namespace) -> list[tuple[MapSpec, str | None]]:
    """The maps to measure, each with a reason when it is skipped."""
    explicit = args.types is not None and args.modes is not None
    out = []
    for type_ in args.types or TYPES:
        for prealloc in args.modes or [True, False]:
            spec = MapSpec(type_, prealloc, args.key_size, args.value_size, args.max_entries,
                           args.map_flags)
            skip = None
            if spec.lru and not prealloc and not explicit:
                skip = LRU_PREALLOC_ONLY
            out.append((spec, skip))
    return out


def measure(spec: MapSpec) -> dict:
    """Create, fill, drain one map; every figure read back from the kernel."""
    record = {"type": spec.type, "prealloc": spec.prealloc, "max_entries": spec.max_entries,
              "key_size": spec.key_size, "value_size": spec.value_size}
    start = time.perf_counter()
    with spec.create() as m:
        record["create_ms"] = round((time.perf_counter() - start) * 1000, 3)
        view = m.kernel_view()
        record["map_flags"] = view["map_flags"]
        record["memlock_empty"] = view["memlock"]
        record["memlock_is_estimate"] = m.memlock_is_estimate()
        m.fill(spec.max_entries)
        record["memlock_full"] = m.memlock()
        record["entries_full"] = len(m.keys())
        try:
            m.update(spec.max_entries, 0, bpfsys.NOEXIST)
            record["new_key_when_full"] = "evicted" if spec.lru else "accepted"
        except KernelError as e:
            record["new_key_when_full"] = errno_name(e.err) if e.err else str(e)
        m.drain()
        record["memlock_drained"] = m.memlock()
    record["skipped"] = None
    return record


def run(args: argparse.Namespace) -> int:
    plan = specs_for(args)
    records = []
    progress = Progress(len(plan))
    for spec, skip in plan:
        progress.step(spec.label)
        if skip:
            records.append({"type": spec.type, "prealloc": spec.prealloc,
                            "max_entries": spec.max_entries, "skipped": skip})
            continue
        records.append(measure(spec))
    progress.done()
    if args.json:
        print_json(records)
        return 0
    rows = []
    for r in records:
        alloc = "prealloc" if r["prealloc"] else "no_prealloc"
        if r.get("skipped"):
            rows.append([r["type"], alloc, None, None, None, None, None, None,
                         "skipped: LRU maps are preallocated only"])
            continue
        rows.append([r["type"], alloc, f"{r['map_flags']:#x}", r["create_ms"],
                     human_bytes(r["memlock_empty"]), human_bytes(r["memlock_full"]),
                     human_bytes(r["memlock_drained"]), r["entries_full"],
                     r["new_key_when_full"]])
    table(["type", "alloc", "map_flags", "create ms", "memlock empty", "memlock full",
           "memlock drained", "entries", "new key when full"], rows)
    print(f"\n{MEMLOCK_NOTE}.", file=sys.stdout)
    if any(r.get("memlock_is_estimate") for r in records):
        print("On this kernel memlock is that estimate: it does not show what a map uses.",
              file=sys.stdout)
    return 0
