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


def test_nmi_updates_get_the_errno_the_era_predicts(pybpfmap, nmis):
    """Both NMI scenarios in one command: the same key, and a key of the bucket
    on another map_locked slot."""
    facts = kfacts.probe()
    wanted = {s: era.nmi_prediction(facts, MapSpec("hash", True), s == "nmi-slot")
              for s in ("nmi", "nmi-slot")}
    if any(p.expect is not era.Expect.ERRNO for p in wanted.values()):
        pytest.skip("the era predicts a deadlock here: only a host watching can run it")
    (run,) = json_out(pybpfmap("stress", "--scenario", "nmi,nmi-slot", "--types",
                               "hash/prealloc", "--duration", "3", "--json"))
    assert [r["scenario"] for r in run["rows"]] == list(wanted)
    for row in run["rows"]:
        p = wanted[row["scenario"]]
        assert (row["outcome"], row["as_predicted"]) == ("PASS", True), row["reasons"]
        nmi_probe = next(q for q in row["per_probe"] if q["probe"] == "nmi:nmi_handler")
        got = set(nmi_probe["results"]["nmi update"]) - {"ok"}
        assert got and got <= {errno_name(e) for e in p.errnos}, nmi_probe["results"]
        # the errors came from NMIs that landed inside a holder's update or delete
        inside = row["workloads"]["nmi"]["inside_holder"]
        assert set(inside) - {"ok"} == got, inside
        lat = nmi_probe["latency"]
        assert lat["count"] == nmi_probe["events"] > 0 and lat["max_ns"] > 0
        assert sum(lat["log2_ns"].values()) == lat["count"]
        # the softirq holder ran on the veth traffic
        xdp = next(q for q in row["per_probe"] if q["kind"] == "xdp")
        assert xdp["events"] > 0 and row["workloads"]["stressed"]["softirq"]["ops"] > 0
        if errno.EDEADLK in p.errnos:
            assert facts.has(commits.RQSPINLOCK)
