"""The allocation ledger (pybpfmap.ledger) against the running kernel: what
one process's bpf(2) calls allocate is seen, temporary and freed memory nets
out, another process's is not counted, and nothing stays loaded."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pybpfmap import bpfsys, btf, ledger, procs
from pybpfmap.commits import MEM_ALLOC
from pybpfmap.kernel import Kernel
from pybpfmap.maps import MapSpec

# About this kernel: `pybpfmap vm test` runs these in each test VM too.
pytestmark = [pytest.mark.root]   # its era is 5.10 (docs/maps.md has the figures there)

REPO = Path(__file__).resolve().parent.parent
BUCKET = 16  # sizeof(struct bucket) without lock debugging


def elem_size(spec: MapSpec) -> int:
    """htab_map_alloc()'s elem_size for a non-per-CPU hash: struct htab_elem
    (from BTF; 48 bytes in 5.10 and 6.x without it) + key and value rounded
    up to 8."""
    b = btf.read_vmlinux()
    t = b.find_struct("htab_elem") if b else None
    head = t.ref if t is not None else 48
    return head + (spec.key_size + 7) // 8 * 8 + (spec.value_size + 7) // 8 * 8


def buckets(spec: MapSpec) -> int:
    return BUCKET * (1 << (spec.max_entries - 1).bit_length())


@pytest.fixture(scope="module")
def ledger_here() -> Iterator[ledger.Ledger]:
    reason = ledger.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with ledger.recording() as led:
        yield led


def test_preallocated_map_creation_is_seen(ledger_here: ledger.Ledger) -> None:
    spec = MapSpec("hash", True, 4, 8, 10000)
    assert ledger_here.settle()
    before = ledger_here.reading()
    with spec.create():
        seen = ledger_here.reading()
    grew = seen.total - before.total
    assert grew >= spec.max_entries * elem_size(spec) + buckets(spec), seen
    assert seen.complete, seen


def test_temporary_copies_net_to_zero(ledger_here: ledger.Ledger) -> None:
    """Lookups and updates of an existing key of a preallocated map allocate
    only key/value copies that bpf(2) frees again: nothing stays, and the peak
    saw them."""
    with MapSpec("hash", True, 4, 8, 64).create() as m:
        m.update(1, 1)
        assert ledger_here.settle()
        ledger_here.reset_peak()
        before = ledger_here.reading()
        assert before.peak == before.total
        for _ in range(10):
            m.update(1, 2)
        after = ledger_here.reading()
    assert (after.kmalloc, after.percpu) == (before.kmalloc, before.percpu)
    assert after.peak > before.peak


def test_no_prealloc_update_delete_nets_to_zero(ledger_here: ledger.Ledger,
                                                kernel: Kernel) -> None:
    fact = kernel.kernel_facts().fact(MEM_ALLOC)
    if fact.present:
        pytest.skip(f"NO_PREALLOC elements come from bpf_mem_alloc's per-CPU caches "
                    f"({fact.describe()}): a delete returns them to the cache, not to kfree")
    spec = MapSpec("hash", False, 4, 8, 1024)
    n = 100
    with spec.create() as m:
        assert ledger_here.settle()
        before = ledger_here.reading()
        m.fill(n)
        full = ledger_here.reading()
        assert full.kmalloc - before.kmalloc >= n * elem_size(spec), full
        assert m.drain() == n
        assert ledger_here.settle()
        drained = ledger_here.reading()
    assert (drained.kmalloc, drained.percpu) == (before.kmalloc, before.percpu), drained


def test_peak_survives_close_until_reset(ledger_here: ledger.Ledger) -> None:
    spec = MapSpec("hash", True, 4, 8, 256)
    assert ledger_here.settle()
    ledger_here.reset_peak()
    before = ledger_here.reading()
    with spec.create():
        held = ledger_here.reading()
    assert ledger_here.settle()
    after = ledger_here.reading()
    assert after.total == before.total
    assert after.peak - after.vmalloc >= held.kmalloc + held.percpu > 0
    ledger_here.reset_peak()
    assert ledger_here.reading().peak == after.total


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from pybpfmap.maps import MapSpec
from pybpfmap.procs import tell_ready
sys.stdin.readline()
m = MapSpec("hash", True, 4, 8, 64).create()
tell_ready()
sys.stdin.readline()
"""


def test_other_process_is_not_counted() -> None:
    """A map another process creates is in that process's ledger and not in
    this one's.  The map is small enough to be kmalloc'd: /proc/vmallocinfo
    names no process, so vmalloc areas cannot be told apart."""
    reason = ledger.unavailable_reason()
    if reason:
        pytest.skip(reason)
    spec = MapSpec("hash", True, 4, 8, 64)
    with procs.Child([sys.executable, "-c", CHILD, str(REPO)], ready=True,
                     stdin=subprocess.PIPE, text=True) as child, \
            ledger.recording(child.pid) as theirs, ledger.recording() as mine:
        assert child.popen.stdin is not None
        child.popen.stdin.write("go\n")
        child.popen.stdin.flush()
        child.wait_ready(60)
        their, my = theirs.reading(), mine.reading()
        child.popen.stdin.close()
    assert their.kmalloc >= spec.max_entries * elem_size(spec), their
    assert (my.kmalloc, my.percpu) == (0, 0), my


LEDGER_MAPS = (b"in_bpf", b"live", b"sites", b"stats")


def _ids(led: ledger.Ledger) -> tuple[set[int], set[int]]:
    progs = {bpfsys.prog_info(f.fd)[0].id for f in led.bpf.funcs.values()}
    maps = {bpfsys.map_info(led.bpf[name].map_fd).id for name in LEDGER_MAPS}
    return progs, maps


@pytest.mark.parametrize("interrupted", [False, True], ids=["exit", "ctrl-c"])
def test_nothing_left_loaded(interrupted: bool) -> None:
    """Every program and map of the ledger is gone once the block is left,
    also by Ctrl-C."""
    reason = ledger.unavailable_reason()
    if reason:
        pytest.skip(reason)
    progs: set[int] = set()
    maps: set[int] = set()
    try:
        with ledger.recording() as led:
            progs, maps = _ids(led)
            if interrupted:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        assert interrupted
    assert progs and maps

    def left() -> tuple[set[int], set[int]]:
        return (progs & bpfsys.all_ids(bpfsys.PROG_GET_NEXT_ID),
                maps & bpfsys.all_ids(bpfsys.MAP_GET_NEXT_ID))

    # Closing a raw tracepoint link frees it (and so its program) only after
    # a grace period on newer kernels: wait for the ids to go, not for a time.
    procs.wait_until(lambda: left() == (set(), set()), 30)
    assert left() == (set(), set())
