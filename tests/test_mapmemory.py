"""A map's kernel memory by each method: the seed's difference between a
preallocated map (charged up front) and a NO_PREALLOC one (growing), and peaks."""

from __future__ import annotations

import pytest

from pybpfmap import footprint, mapmemory
from pybpfmap.maps import MapSpec

pytestmark = [pytest.mark.root]

N = 20000


def _method_or_skip(method: str) -> None:
    chosen, why = mapmemory.choose(method)
    if not chosen:
        pytest.skip(f"method {method} does not work here: {why}")


@pytest.mark.parametrize("method", ["auto", "ledger"])
def test_preallocated_charged_up_front_no_prealloc_grows(method: str) -> None:
    _method_or_skip(method)
    pre = footprint.measure(MapSpec("hash", True, 4, 8, N), "here", "", method)
    lazy = footprint.measure(MapSpec("hash", False, 4, 8, N), "here", "", method)
    elements = N * (48 + 8 + 8)   # sizeof(struct htab_elem) is 48 on x86-64 (BTF)
    assert pre.memory["empty"].kernel >= elements, pre.memory
    assert pre.memory["full"].kernel == pytest.approx(pre.memory["empty"].kernel, rel=0.05)
    assert lazy.memory["empty"].kernel < pre.memory["empty"].kernel / 2, lazy.memory
    assert lazy.memory["full"].kernel > lazy.memory["empty"].kernel + N * 8, lazy.memory
    for rec in (pre, lazy):
        assert not rec.method.startswith("unavailable"), rec.method
        peak = rec.memory["drained"].peak
        assert peak is None or peak >= rec.memory["full"].kernel, rec.memory


def test_memory_max_makes_the_preallocated_map_fail_at_creation() -> None:
    _method_or_skip("memcg")
    from pybpfmap.errors import KernelError

    spec = MapSpec("hash", True, 4, 8, N)
    with mapmemory.metered(spec, "memcg") as (_, meter):
        cost = meter.reading().total
    with pytest.raises(KernelError) as e, mapmemory.metered(spec, "memcg", limit=cost // 2):
        pass
    assert e.value.err == 12, e.value.message()   # ENOMEM


def test_a_limit_needs_the_memory_cgroup_method() -> None:
    from pybpfmap.errors import UsageError

    chosen, _ = mapmemory.choose("auto")
    if chosen == "memcg":
        pytest.skip("this kernel charges maps to the memory cgroup: a limit is possible")
    with pytest.raises(UsageError) as e, mapmemory.metered(MapSpec(), limit=1 << 20):
        pass
    assert e.value.param == "--memory-max"
