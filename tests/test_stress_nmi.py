"""`pybpfmap stress --scenario nmi` where the NMIs are real: inside the test VM,
whose host injects them on request (``pybpfmap vm test`` runs these in each
guest; CI in trixie-backports' 7.3, where the resilient bucket lock answers
-EDEADLK).  The deadlock of 5.10 needs a host to watch the guest:
tests/test_stress_vm.py.  Nothing here is about how fast: only which errnos
the kernel gave the NMI's updates, and that the row said so."""

from __future__ import annotations

import errno

import pytest

from pybpfmap import commits, era, guest, kfacts
from pybpfmap.errors import errno_name
from pybpfmap.maps import MapSpec
from pybpfmap.stress import nmi
from pybpfmap.stress.kinds import BY_NAME
from pybpfmap.stress.records import SKIPPED
from tests.helpers import json_out

pytestmark = [pytest.mark.root, pytest.mark.guest]


@pytest.fixture
def nmis() -> None:
    why = guest.nmi_unavailable()
    if why:
        pytest.skip(why)


def test_without_an_nmi_source_the_row_says_why(monkeypatch):
    monkeypatch.delenv(guest.ENV_KERNEL, raising=False)
    row, log = nmi.run_row(nmi.NAME, BY_NAME["hash/prealloc"], None, 1.0, 100.0, None)
    assert (row.outcome, log) == (SKIPPED, "")
    assert row.reasons == [guest.nmi_unavailable()] and "--kernel K" in row.reasons[0]


@pytest.mark.parametrize("scenario", ["nmi", "nmi-slot"])
def test_nmi_updates_get_the_errno_the_era_predicts(pybpfmap, nmis, scenario):
    facts = kfacts.probe()
    p = era.nmi_prediction(facts, MapSpec("hash", True), scenario == "nmi-slot")
    if p.expect is not era.Expect.ERRNO:
        pytest.skip(f"the era predicts {p.describe()} here: only a host watching can run it")
    (run,) = json_out(pybpfmap("stress", "--scenario", scenario, "--types", "hash/prealloc",
                               "--duration", "3", "--json"))
    (row,) = run["rows"]
    assert (row["outcome"], row["as_predicted"]) == ("PASS", True), row["reasons"]
    nmi_probe = next(p for p in row["per_probe"] if p["probe"] == "nmi:nmi_handler")
    got = set(nmi_probe["results"]["nmi update"]) - {"ok"}
    assert got and got <= {errno_name(e) for e in p.errnos}, nmi_probe["results"]
    # the errors came from NMIs that landed inside the holder's update or delete
    inside = row["workloads"]["nmi"]["inside_holder"]
    assert set(inside) - {"ok"} == got, inside
    lat = nmi_probe["latency"]
    assert lat["count"] == nmi_probe["events"] > 0 and lat["max_ns"] > 0
    assert sum(lat["log2_ns"].values()) == lat["count"]
    if errno.EDEADLK in p.errnos:
        assert facts.has(commits.RQSPINLOCK)
