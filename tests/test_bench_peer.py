"""pybpfmap bench --peer: the glue between pybpfmap's records and
map_perf_test's results (pybpfmap.bench.peer parses and runs the tool; its
own tests are tests/test_peer.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pybpfmap.bench import compare, peer
from pybpfmap.bench.options import Options

MPT_OUTPUT = """\
0:hash_map_perf pre-alloc 1203344 events per sec
1:hash_map_perf pre-alloc 1196656 events per sec
"""


def test_peer_rate_is_the_mean_of_its_cpus() -> None:
    results = peer.parse(MPT_OUTPUT)
    assert compare.rate_per_cpu(results) == pytest.approx(1_200_000)
    with pytest.raises(ValueError):
        compare.rate_per_cpu([])


def test_peer_differences_are_listed() -> None:
    build = peer.PeerBuild(Path("/x"), "6.1.0-50-amd64", "6.1.176-1", "bpf_mem_alloc",
                           {t.bit: 10 for t in peer.PEER_TESTS})
    test = next(t for t in peer.PEER_TESTS if t.map_type == "hash" and not t.prealloc)
    same = compare.differences(test, Options(key="tid", syscall_triples=10), build)
    assert any("33 extra keys" in d for d in same) and any("bpf_mem_alloc" in d for d in same)
    other = compare.differences(test, Options(key="random", syscall_triples=1), build)
    assert len(other) == len(same) + 2
