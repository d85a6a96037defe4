"""BCC loading: whatever happens inside, nothing stays loaded."""

from __future__ import annotations

import errno

import pytest

from pybpfmap.errors import KernelError
from pybpfmap.loader import bcc_program, map_fd
from pybpfmap.maps import ENOTSUPP, MapSpec
from tests.bpf_objects import leftovers, loaded_ids

# About this kernel: `pybpfmap vm test` runs these in each test VM too.
pytestmark = [pytest.mark.root, pytest.mark.guest]


def test_program_and_maps_unloaded_after_with_block():
    before = loaded_ids()
    with bcc_program("maps.c", maps={"MAP": MapSpec("hash", False)}) as bpf:
        assert map_fd(bpf, "MAP") >= 0
        inside = loaded_ids()["maps"] - before["maps"]
        assert inside, "the map must be loaded inside the block"
    assert inside.isdisjoint(loaded_ids()["maps"])
    assert not leftovers(before)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_unloaded_when_block_raises(exc):
    before = loaded_ids()
    with pytest.raises(exc), bcc_program("maps.c", maps={"MAP": MapSpec("percpu_hash")}):
        inside = loaded_ids()["maps"] - before["maps"]
        assert inside
        raise exc()
    assert inside.isdisjoint(loaded_ids()["maps"])


def test_refused_map_is_explained_before_bcc_and_leaves_nothing():
    before = loaded_ids()
    with pytest.raises(KernelError) as e, \
            bcc_program("maps.c", maps={"MAP": MapSpec("lru_hash", prealloc=False)}):
        pass
    assert e.value.err == ENOTSUPP
    assert not leftovers(before)
    with pytest.raises(KernelError) as e, \
            bcc_program("maps.c", maps={"MAP": MapSpec("hash", max_entries=0)}):
        pass
    assert e.value.err == errno.EINVAL and e.value.param == "max_entries"
