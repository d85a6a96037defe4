"""The stress workloads: bounded in time, counting what they did, and the veth
pair between two uuid-named network namespaces made and removed with pyroute2."""

from __future__ import annotations

import os

import pytest

from pybpfmap.stress import workloads


def _netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


@pytest.mark.root  # network namespaces
def test_veth_pair_is_made_and_removed():
    before = _netns()
    with workloads.veth_pair() as pair:
        assert {pair.ns_a, pair.ns_b} <= _netns()
        assert pair.ns_a != pair.ns_b and pair.ns_a.startswith("pybpfmap-")
    assert _netns() == before


@pytest.mark.root
def test_teardown_tolerates_what_is_already_gone():
    from pyroute2 import netns

    before = _netns()
    with workloads.veth_pair() as pair:
        netns.remove(pair.ns_a)  # takes its veth end, and so the pair, with it
    assert _netns() == before


@pytest.mark.root
def test_every_context_makes_progress_within_its_time():
    """A context still running 30 s after its time is reported stuck by
    results() (an "error"): no wall-clock bound of the test's own."""
    with workloads.veth_pair() as pair:
        res = workloads.run(0.5, pair=pair)
    assert set(res) == set(workloads.CONTEXTS)
    for name, counts in res.items():
        assert "error" not in counts, (name, counts)
        assert counts["ops"] > 0 and counts["ops_per_s"] > 0, (name, counts)
    assert res["softirq"]["packets_received"] > 0
    assert res["irq"]["timer_ticks"] > 0 and res["irq"]["signals"] > 0
    assert res["process"]["forks"] > 0


def test_unknown_context_is_refused():
    with pytest.raises(ValueError):
        workloads.run(0.1, contexts=("gpu",))
