"""`pybpfmap stress` with kprobes on the spin_unlock functions — the real check.

Marked ``kprobes``: on a host without CONFIG_KPROBES these skip, and run inside
the test VM (`pybpfmap vm test`, or the Vagrant box).
The guest is ours alone, so cleanup is checked strictly: every BPF program
and map ID, and kprobe_events, identical before and after.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pybpfmap import era, kfacts
from pybpfmap.errors import errno_name
from pybpfmap.kernel import UNLOCK_FUNCTIONS
from pybpfmap.stress import allocator, kinds
from pybpfmap.stress.probes import KPROBE, Probe
from pybpfmap.tracefs import KPROBE_EVENTS
from tests import stress_leftovers as leftovers
from tests.bpf_objects import loaded_ids
from tests.helpers import json_out, kprobe_refusals

pytestmark = [pytest.mark.root, pytest.mark.kprobes]
SAFE = ["hash/prealloc", "lru_hash/prealloc"]  # predicted PASS in every era


def one_run(proc) -> dict:
    """The one run of a ``pybpfmap stress --json`` here (its records are a list)."""
    (run,) = json_out(proc)
    return run


@pytest.fixture
def strict_clean():
    """Nothing at all may change: program/map IDs, bpftool's view, kprobe_events
    (measured from a quiet start: an earlier test's objects may still be in the
    kernel's deferred frees)."""
    before = leftovers.quiescent()
    yield
    assert leftovers.settled(before) == {}
    after = leftovers.snapshot()
    assert after["ids"] == before["ids"]
    assert after["kprobe_events"] == before["kprobe_events"]


def test_every_unlock_probe_fires_and_rows_are_as_predicted(pybpfmap, kernel, strict_clean):
    """Probed: every spin_unlock function that takes a kprobe here (BCC tried
    each); left out, with a reason, exactly those the kernel refuses one."""
    refused = {f: why for f, why in kprobe_refusals(UNLOCK_FUNCTIONS).items() if why}
    res = one_run(pybpfmap("stress", "--json", "--duration", "2", "--baseline", "0.5",
                            "--types", ",".join(SAFE)))
    assert set(res["unavailable"]) == set(refused), refused
    assert [r["kind"] for r in res["rows"]] == SAFE
    for row in res["rows"]:
        assert (row["outcome"], row["as_predicted"]) == ("PASS", True), row["reasons"]
        probed = [p["probe"] for p in row["per_probe"]]
        assert probed == [f for f in UNLOCK_FUNCTIONS if f not in refused], refused
        for probe in row["per_probe"]:
            assert probe["events"] > 0 and probe["kprobe_hits"] > 0, probe
            assert probe["kprobe_nmissed"] is not None
            counted = era.kprobe_recursion_misses_counted(kfacts.probe())
            assert (probe["recursion_misses"] is not None) is counted


def test_reentry_row_is_as_predicted_here(pybpfmap, kernel, strict_clean):
    facts = kfacts.probe()   # this kernel's, probed: what the stress run in it predicts
    if era.reentry_prediction(facts).expect is era.Expect.DEADLOCK:
        pytest.skip(f"the re-entry scenario deadlocks {kernel.kernel_release} (predicted): "
                    "tests/test_stress_vm.py checks that, one boot per row")
    predicted = era.reentry_prediction(facts)
    rows = one_run(pybpfmap("stress", "--json", "--scenario", "reentry", "--duration", "1",
                             "--types", "hash/prealloc,percpu_hash/no_prealloc"))["rows"]
    assert [r["kind"] for r in rows] == ["hash/prealloc", "percpu_hash/no_prealloc"]
    for row in rows:
        assert (row["outcome"], row["as_predicted"]) == ("PASS", True), row
        assert row["per_probe"][1]["events"] > 0  # the inner program ran inside the update
        # the era's errno (EBUSY from map_locked, EDEADLK/ETIMEDOUT from the
        # resilient lock) was counted, not merely nothing bad
        wanted = {errno_name(e) for e in predicted.errnos}
        assert set(row["errors"]["nested update"]) & wanted, row["errors"]


def test_cleanup_on_ctrl_c_with_kprobes(strict_clean, ctrl_c):
    result = ctrl_c(["stress", "--duration", "60", "--baseline", "0.3", "--types",
                     "hash/prealloc"], timeout=300)
    assert result.returncode == 130, result.stderr


def test_loaded_ids_sees_the_program_while_attached(kernel):
    """The cleanup checks mean something: while attached, our IDs are visible."""
    before = loaded_ids()
    probes = [Probe(KPROBE, kernel.unlock_symbols[0])]
    with allocator.loaded(kinds.BY_NAME["hash/prealloc"], probes, "test") as ld:
        during = loaded_ids()
        assert during["progs"] - before["progs"]
        assert during["maps"] - before["maps"]
        assert "pybpfmap_" in Path(KPROBE_EVENTS).read_text()
        assert ld.events
