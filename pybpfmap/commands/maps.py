"""``pybpfmap maps``: create each kind of hash map and show what the kernel charges.

For every map: the kernel's map_flags (bpf_map_info), the memory it costs
when empty, filled to max_entries and after every element was deleted — from
the memory cgroup the map was created in (``memory.current`` of a fresh child
cgroup, with ``memory.stat``'s percpu and slab split), beside fdinfo
``memlock`` — the creation time, and what a new key does to a full map
(E2BIG, or an eviction for LRU maps).  A preallocated map charges its memory
up front; a BPF_F_NO_PREALLOC map grows with its contents.
"""

from __future__ import annotations

import argparse
import os

from pybpfmap.commands.args import add_json, add_kernel, add_list, emit, u32
from pybpfmap.footprint import MapRecord, load, measure, render_text, skipped
from pybpfmap.kernel import place
from pybpfmap.maps import LRU_PREALLOC_ONLY, TYPES, MapSpec
from pybpfmap.output import Progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("maps", help="create each hash map kind; show flags and memory charged",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_list(p, "--type", "--types", dest="types", valid=TYPES, metavar="TYPE",
             help=f"map types, comma- or space-separated, repeatable "
                  f"(default: all of {', '.join(TYPES)})")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--prealloc", dest="modes", action="store_const", const=[True],
                      help="only preallocated maps (the kernel default)")
    mode.add_argument("--no-prealloc", dest="modes", action="store_const", const=[False],
                      help="only BPF_F_NO_PREALLOC maps")
    p.add_argument("--max-entries", type=u32, default=10000, metavar="N")
    p.add_argument("--key-size", type=u32, default=4, metavar="N")
    p.add_argument("--value-size", type=u32, default=8, metavar="N")
    p.add_argument("--map-flags", type=bits, default=0, metavar="BITS",
                   help="extra raw map_flags bits to OR in (e.g. 0x2 BPF_F_NO_COMMON_LRU), "
                   "to see what the kernel accepts")
    add_json(p)
    add_kernel(p, "measure")
    p.set_defaults(func=run)


def bits(text: str) -> int:
    """A 32-bit integer in any base Python accepts (0x2, 2, 0b10)."""
    return u32(text, base=0)


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


def local(args: argparse.Namespace) -> list[MapRecord]:
    where, _ = place()
    release = os.uname().release
    plan = specs_for(args)
    records = []
    progress = Progress(len(plan))
    try:
        for spec, skip in plan:
            progress.step(spec.label)
            records.append(skipped(spec, skip, where, release) if skip
                           else measure(spec, where, release))
    finally:
        progress.done()
    return records


def run(args: argparse.Namespace) -> int:
    if args.kernels:
        from pybpfmap.commands import invm

        records = invm.records(args, load, timeout=1800)
    else:
        records = local(args)
    emit(args, records, render_text)
    return 0
