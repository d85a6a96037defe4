"""``pybpfmap maps``: create each kind of hash map and show what the kernel charges.

For every map: the kernel's map_flags (bpf_map_info), the memory it costs
when empty, filled to max_entries and after every element was deleted — from
the memory cgroup the map was created in (``memory.current`` of a fresh child
cgroup, with ``memory.stat``'s percpu and slab split), beside fdinfo
``memlock`` — the creation time, and what a new key does to a full map
(E2BIG, or an eviction for LRU maps).  A preallocated map charges its memory
up front; a BPF_F_NO_PREALLOC map grows with its contents.

With --from-bpf (or --memory-max): each map is instead filled from a tracing
program (a raw tracepoint program run with BPF_PROG_TEST_RUN on each CPU) and
every errno counted, beside free memory and the kernel's failed per-CPU
allocations; --memory-max creates each map in a memory cgroup with that
memory.max (auto: half of what the preallocated map costs), and a fresh map
gets the same keys by one BPF_MAP_UPDATE_BATCH.
"""

from __future__ import annotations

import argparse
import os

from pybpfmap import enomem, footprint, mapmemory
from pybpfmap.commands.args import (
    add_json,
    add_kernel,
    add_list,
    byte_count,
    emit,
    positive_int,
    u32,
)
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
    p.add_argument("--memory-method", choices=mapmemory.METHODS, default="auto",
                   help="how a map's kernel memory is read: its memory cgroup (kernels that "
                   "charge maps to one, 5.11+), the allocation ledger (kmem/percpu "
                   "tracepoints and vmallocinfo), or auto: the cgroup where it works")
    bpf = p.add_argument_group("filling from a tracing program")
    bpf.add_argument("--from-bpf", action="store_true",
                     help="fill each map from a raw tracepoint program (BPF_PROG_TEST_RUN on "
                     "each CPU) and count every errno")
    bpf.add_argument("--updates", type=positive_int, metavar="N",
                     help="new keys to insert from the program (default: max_entries)")
    bpf.add_argument("--cpus", type=positive_int, metavar="N",
                     help="insert from the first N CPUs this process may run on (default all)")
    bpf.add_argument("--memory-max", metavar="BYTES|auto", type=memory_max,
                     help="create each map in a memory cgroup with this memory.max (implies "
                     "--from-bpf; auto: half of what the preallocated map costs)")
    add_json(p)
    add_kernel(p, "measure")
    p.set_defaults(func=run)


def memory_max(text: str) -> str | int:
    """``auto`` or a number of bytes (32M, 1G, 1048576)."""
    return text if text == enomem.AUTO else byte_count(text)


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


def from_bpf(args: argparse.Namespace) -> bool:
    return args.from_bpf or args.memory_max is not None


def local(args: argparse.Namespace) -> list:
    where, _ = place()
    release = os.uname().release
    plan = specs_for(args)
    limit = args.memory_max
    cpus = enomem.online_cpus()[:args.cpus] if args.cpus else enomem.online_cpus()
    records = []
    progress = Progress(len(plan))
    try:
        for spec, skip in plan:
            progress.step(spec.label)
            if not from_bpf(args):
                records.append(footprint.skipped(spec, skip, where, release) if skip
                               else footprint.measure(spec, where, release,
                                                      args.memory_method))
                continue
            updates = args.updates or spec.max_entries
            lim = enomem.auto_limit(spec) if limit == enomem.AUTO and not skip else limit
            records.append(
                enomem.skipped(spec, updates, skip, where, release, lim) if skip
                else enomem.measure(spec, updates, cpus, where, release, lim))
    finally:
        progress.done()
    return records


def run(args: argparse.Namespace) -> int:
    load, render = ((enomem.load, enomem.render_text) if from_bpf(args)
                    else (footprint.load, footprint.render_text))
    if args.kernels:
        from pybpfmap.commands import invm
        from pybpfmap.vm.run import no_prealloc_tracing_splats

        splats = no_prealloc_tracing_splats if from_bpf(args) else invm.no_splats
        records = invm.records(args, load, timeout=1800, expected_splats=splats)
    else:
        records = local(args)
    emit(args, records, render)
    return 0
