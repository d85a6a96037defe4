"""The map layer against the running kernel: semantics of every type x allocation mode.

In the spirit of the kernel's tools/testing/selftests/bpf/test_maps.c, which
runs every hash map test twice: with flags 0 and with BPF_F_NO_PREALLOC.
"""

from __future__ import annotations

import errno
import multiprocessing

import pytest

from pybpfmap import bpfsys, memlock
from pybpfmap.errors import KernelError
from pybpfmap.loader import bcc_program, map_fd
from pybpfmap.maps import ENOTSUPP, MapSpec, old_memlock_estimate
from tests.helpers import bpftool

# About this kernel: `pybpfmap vm test` runs these in each test VM too.
pytestmark = [pytest.mark.root, pytest.mark.guest]

ALL = [(t, p) for t in ("hash", "percpu_hash", "lru_hash", "lru_percpu_hash")
       for p in (True, False)]
CREATABLE = [(t, p) for t, p in ALL if p or not t.startswith("lru")]
NON_LRU = [(t, p) for t, p in CREATABLE if not t.startswith("lru")]
LRU = [(t, p) for t, p in CREATABLE if t.startswith("lru")]


def ids(params):
    return [f"{t}-{'prealloc' if p else 'no_prealloc'}" for t, p in params]


@pytest.mark.parametrize("type_,prealloc", CREATABLE, ids=ids(CREATABLE))
def test_kernel_reports_requested_flags_and_sizes(type_, prealloc):
    spec = MapSpec(type_, prealloc, key_size=8, value_size=16, max_entries=64)
    with spec.create() as m:
        view = m.kernel_view()
    assert view["map_flags"] == (0 if prealloc else bpfsys.F_NO_PREALLOC)
    assert view["map_type"] == bpfsys.MAP_TYPES[type_]
    assert (view["key_size"], view["value_size"], view["max_entries"]) == (8, 16, 64)


@pytest.mark.parametrize("type_", ["lru_hash", "lru_percpu_hash"])
def test_lru_refuses_no_prealloc_with_enotsupp(type_):
    with pytest.raises(KernelError) as e:
        MapSpec(type_, prealloc=False).create()
    assert e.value.err == ENOTSUPP
    assert "ENOTSUPP (524" in e.value.message()
    assert e.value.param == "no_prealloc"  # the CLI shows it as --no-prealloc


@pytest.mark.parametrize("type_,prealloc", NON_LRU, ids=ids(NON_LRU))
def test_new_key_into_full_map_is_e2big(type_, prealloc):
    with MapSpec(type_, prealloc, max_entries=32).create() as m:
        m.fill(32)
        with pytest.raises(KernelError) as e:
            m.update(32, 1)
        assert e.value.err == errno.E2BIG
        assert "map is full: max_entries=32" in e.value.message()
        # An existing key can still be updated in place.
        m.update(5, 99, bpfsys.EXIST)
        assert m.lookup(5)[0] == 99
        assert sorted(m.keys()) == list(range(32))


@pytest.mark.parametrize("type_,prealloc", LRU, ids=ids(LRU))
def test_lru_evicts_instead_of_failing(type_, prealloc):
    with MapSpec(type_, prealloc, max_entries=128).create() as m:
        for key in range(1000):
            m.update(key, key)
        keys = m.keys()
        assert 0 < len(keys) <= 128
        assert 999 in keys, "the newest key must survive"
        assert len(set(keys) & set(range(100))) < 100, "old keys must have been evicted"


@pytest.mark.parametrize("type_,prealloc", CREATABLE, ids=ids(CREATABLE))
def test_noexist_exist_flags(type_, prealloc):
    with MapSpec(type_, prealloc, max_entries=16).create() as m:
        with pytest.raises(KernelError) as e:
            m.update(1, 1, bpfsys.EXIST)
        assert e.value.err == errno.ENOENT
        m.update(1, 1, bpfsys.NOEXIST)
        with pytest.raises(KernelError) as e:
            m.update(1, 2, bpfsys.NOEXIST)
        assert e.value.err == errno.EEXIST
        m.update(1, 3, bpfsys.EXIST)
        assert m.lookup(1)[0] == 3
        with pytest.raises(KernelError) as e:
            m.update(1, 3, 4)  # flags > BPF_EXIST without BPF_F_LOCK
        assert e.value.err == errno.EINVAL


@pytest.mark.parametrize("type_,prealloc", CREATABLE, ids=ids(CREATABLE))
def test_missing_key_lookup_and_delete_are_enoent(type_, prealloc):
    with MapSpec(type_, prealloc, max_entries=16).create() as m:
        for op in (m.lookup, m.delete):
            with pytest.raises(KernelError) as e:
                op(7)
            assert e.value.err == errno.ENOENT
        m.update(7, 1)
        m.delete(7)
        with pytest.raises(KernelError):
            m.lookup(7)


@pytest.mark.parametrize("type_,prealloc",
                         [(t, p) for t, p in CREATABLE if "percpu" in t],
                         ids=ids([(t, p) for t, p in CREATABLE if "percpu" in t]))
def test_percpu_maps_hold_one_value_per_cpu(type_, prealloc):
    with MapSpec(type_, prealloc, value_size=8, max_entries=16).create() as m:
        m.update(3, 0x1234)
        values = m.lookup(3)
    assert len(values) == bpfsys.possible_cpus()
    assert values == [0x1234] * bpfsys.possible_cpus()


@pytest.mark.parametrize("type_", ["hash", "percpu_hash"])
def test_prealloc_charges_up_front_no_prealloc_grows(type_):
    n = 4096
    with MapSpec(type_, True, max_entries=n).create() as pre, \
            MapSpec(type_, False, max_entries=n).create() as lazy:
        pre_empty, lazy_empty = pre.memlock(), lazy.memlock()
        estimate = lazy.memlock_is_estimate()
        pre.fill(n)
        lazy.fill(n)
        pre_full, lazy_full = pre.memlock(), lazy.memlock()
        lazy.drain()
        lazy_drained = lazy.memlock()
    assert pre_empty == pre_full, "a preallocated map is charged in full at creation"
    if estimate:
        assert lazy_empty == lazy_full == lazy_drained, "not usage: fixed at creation"
        if memlock.charged_by_kernel():
            # Before Linux kernel commit 80ee81e0403c ("bpf: Eliminate rlimit-based
            # memory accounting infra for bpf maps") (in v5.11) fdinfo showed the
            # RLIMIT_MEMLOCK charge, computed from max_entries for both modes.
            assert lazy_empty == pre_empty
            pytest.skip("fdinfo memlock is the RLIMIT_MEMLOCK charge here (before Linux "
                        "kernel commit 80ee81e0403c (\"bpf: Eliminate rlimit-based memory "
                        "accounting infra for bpf maps\") (in v5.11)): the same for both "
                        "modes, not usage")
        # Before Linux kernel commit 304849a27b34 ("bpf: hashtab memory usage")
        # (in v6.4) fdinfo showed one estimate from max_entries for every map.
        assert lazy_empty == old_memlock_estimate(lazy.spec)
        pytest.skip("fdinfo memlock is the pre-v6.4 estimate here (Linux kernel commit "
                    "304849a27b34 (\"bpf: hashtab memory usage\") (in v6.4)): a "
                    "NO_PREALLOC map's growth cannot be seen")
    assert pre_empty > 2 * lazy_empty, "an empty NO_PREALLOC map holds only its buckets"
    assert lazy_full > lazy_empty
    assert lazy_drained < lazy_full


@pytest.mark.parametrize("type_,prealloc", CREATABLE, ids=ids(CREATABLE))
def test_bcc_declaration_creates_what_spec_says(type_, prealloc):
    spec = MapSpec(type_, prealloc, key_size=4, value_size=24, max_entries=100)
    with bcc_program("maps.c", maps={"MAP": spec}) as bpf:
        info = bpfsys.map_info(map_fd(bpf, "MAP"))
    assert info.type == bpfsys.MAP_TYPES[type_]
    assert info.map_flags == spec.flags
    assert (info.key_size, info.value_size, info.max_entries) == (4, 24, 100)


def _worker(fd: int, spec: MapSpec, keys: range, queue) -> None:
    """Insert then delete the odd keys of a disjoint range, retrying EBUSY/EAGAIN
    like test_map_parallel; report any other failure."""
    from pybpfmap.maps import BpfMap

    m = BpfMap(spec, fd)

    def retry(op, *args):
        for _ in range(1000):
            try:
                return op(*args)
            except KernelError as e:
                if e.err not in (errno.EBUSY, errno.EAGAIN):
                    raise
        raise AssertionError(f"{op.__name__}{args}: still busy after 1000 tries")

    try:
        for key in keys:
            retry(m.update, key, key, bpfsys.NOEXIST)
        for key in keys:
            assert retry(m.lookup, key)[0] == key
        for key in keys:
            if key % 2:
                retry(m.delete, key)
        queue.put(None)
    except BaseException as e:  # report to the parent, which asserts
        queue.put(repr(e))


@pytest.mark.parametrize("type_,prealloc", NON_LRU, ids=ids(NON_LRU))
def test_parallel_disjoint_insert_delete(type_, prealloc):
    procs, per = 4, 500
    spec = MapSpec(type_, prealloc, max_entries=procs * per)
    ctx = multiprocessing.get_context("fork")
    with spec.create() as m:
        queue = ctx.Queue()
        workers = [ctx.Process(target=_worker,
                               args=(m.fd, spec, range(i * per, (i + 1) * per), queue))
                   for i in range(procs)]
        for w in workers:
            w.start()
        results = [queue.get(timeout=60) for _ in workers]
        for w in workers:
            w.join(timeout=60)
        assert results == [None] * procs
        assert sorted(m.keys()) == list(range(0, procs * per, 2))
        for key in range(0, procs * per, 2):
            assert m.lookup(key)[0] == key


@pytest.mark.parametrize("type_,prealloc", CREATABLE, ids=ids(CREATABLE))
def test_kernel_view_agrees_with_bpftool(type_, prealloc):
    """bpftool is the ground truth for what the kernel reports about a map."""
    with MapSpec(type_, prealloc, max_entries=256).create() as m:
        m.fill(100)
        view = m.kernel_view()
        shown = bpftool("map", "show", "id", str(view["id"]))
    assert shown["type"] == type_
    assert shown["flags"] == view["map_flags"]
    assert shown["max_entries"] == view["max_entries"] == 256
    assert shown["bytes_memlock"] == view["memlock"]
