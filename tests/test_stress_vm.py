"""`pybpfmap stress --kernel K`: the deadlock check meets real deadlocks.

On Debian's 5.10 (bullseye) the seed's deadlock is real: percpu_hash with
BPF_F_NO_PREALLOC locks the guest up on pcpu_lock, while the preallocated
kinds run their whole duration clean; the re-entry scenario locks up one CPU
while the other lives on (the per-vCPU watchdog must see it); on PREEMPT_RT
5.10 the verifier refuses NO_PREALLOC maps at load.  And a guest that dies
during a run is a FAIL, so a PASS means the guest lived.  These need a host
to watch the guest; the re-entry rows that do not hang (EBUSY on 6.1, EDEADLK
or ETIMEDOUT on 7.3) are guest tests (tests/test_stress_kprobes.py, run in
each test VM by `pybpfmap vm test`).  CI runs short rows to fit its budget.
"""

from __future__ import annotations

import pytest

from pybpfmap.vm.watchdog import CROSS_CPU_WAIT, NMI_ENTRY
from tests.helpers import image, json_out

pytestmark = [pytest.mark.vm, pytest.mark.slow]
DURATION = "3"


def stress(kernel: str, *args: str) -> tuple[str, ...]:
    """The arguments of ``pybpfmap stress`` on catalog kernel ``kernel`` (skips
    when its image is not built)."""
    image(kernel)
    return ("stress", "--kernel", kernel, "--duration", DURATION, "--json", *args)


def rows_of(proc) -> list[dict]:
    """The rows of the one run in a ``pybpfmap stress --kernel K --json`` output."""
    (run,) = json_out(proc)
    return run["rows"]


def by_kind(rows: list[dict]) -> dict[str, dict]:
    return {r["kind"]: r for r in rows}


def test_bullseye_percpu_no_prealloc_deadlocks_prealloc_kinds_pass(pybpfmap):
    """The preallocated kinds run their whole rows clean (one boot for the four:
    exit status 0), percpu_hash NO_PREALLOC deadlocks its own boot (every row as
    predicted, and a kind deadlocks: exit status 3, unsafe here)."""
    safe = ["hash/prealloc", "percpu_hash/prealloc", "lru_hash/prealloc",
            "lru_percpu_hash/prealloc"]
    (dead,) = rows_of(pybpfmap(*stress("bullseye", "--types", "percpu_hash/no_prealloc"),
                               expect=3, timeout=1800))
    assert (dead["outcome"], dead["as_predicted"], dead["prediction"]) == (
        "DEADLOCK", True, "DEADLOCK"), dead["reasons"]
    assert dead["seconds"] is not None and dead["evidence"]["qemu_answers"]
    stuck = [v for v in dead["evidence"]["vcpus"] if v["same_function"] and not v["halted"]]
    assert stuck and all("spin_lock" in v["symbol"] for v in stuck), dead["evidence"]
    assert any(v["spin_lock"] and v["spin_lock"].startswith("pcpu_lock") for v in stuck)
    assert any("alloc_htab_elem" in " ".join(v["stack"]) for v in stuck)
    rows = by_kind(rows_of(pybpfmap(*stress("bullseye", "--types", ",".join(safe),
                                            "--no-isolate"), timeout=1800)))
    assert list(rows) == safe
    for kind in safe:
        row = rows[kind]
        assert (row["outcome"], row["as_predicted"]) == ("PASS", True), row["reasons"]
        assert row["seconds"] >= float(DURATION) and row["vm"]["outcome"] == "passed"
        assert row["events"] > 0 and all(p["events"] > 0 for p in row["per_probe"])


def test_bullseye_reentry_locks_up_one_cpu_and_the_watchdog_sees_it(pybpfmap):
    (row,) = rows_of(pybpfmap(*stress("bullseye", "--scenario", "reentry", "--types",
                                      "hash/prealloc"), expect=3, timeout=900))
    assert (row["outcome"], row["as_predicted"]) == ("DEADLOCK", True), row["reasons"]
    vcpus = {v["cpu"]: v for v in row["evidence"]["vcpus"]}
    assert vcpus[0]["same_function"] and "spin_lock" in vcpus[0]["symbol"], vcpus[0]
    # CPU#1 lives on: its heartbeat went on, and sampled it is idle, moving, or
    # waiting for CPU#0 to answer a cross-CPU call (seen with the host busy:
    # khugepaged's TLB flush in smp_call_function_single) -- then its own beats
    # may have stopped too.  Stuck anywhere else, it would be a second lock-up.
    other = vcpus[1]
    waits = other["same_function"] and CROSS_CPU_WAIT.match(other["symbol"])
    assert other["halted"] or not other["same_function"] or waits, other
    message = row["vm"]["message"]
    assert ("CPU#0 stuck" in message and "CPU#1 went on" in message) or (
        waits and "no heartbeat from any vCPU" in message), message


def test_bullseye_nmi_update_deadlocks_in_nmi_context(pybpfmap):
    """The host's NMIs land while the raw_tp holder has the bucket lock: on 5.10
    the NMI program's update spins on it for ever, in NMI context (the NMI
    entry on the stuck CPU's stack, under the map update).  The rows that do
    not hang (EBUSY on 6.1, EDEADLK on 7.3) are guest tests
    (tests/test_stress_nmi.py)."""
    (row,) = rows_of(pybpfmap(*stress("bullseye", "--scenario", "nmi", "--types",
                                      "hash/prealloc"), expect=3, timeout=900))
    assert (row["outcome"], row["as_predicted"]) == ("DEADLOCK", True), row["reasons"]
    stuck = [v for v in row["evidence"]["vcpus"] if v["same_function"] and not v["halted"]]

    def in_nmi_update(v: dict) -> bool:
        frames = [f.split("+")[0] for f in v["stack"]]
        return (any(f in NMI_ENTRY for f in frames) and "htab_map_update_elem" in frames
                and "spin_lock" in v["symbol"] and v["irqs_enabled"] is False)

    # the CPU the NMI landed on; the other may spin on the same lock or wait for it
    assert any(in_nmi_update(v) for v in stuck), row["evidence"]


def test_bullseye_rt_refuses_no_prealloc_at_load(pybpfmap):
    """In both scenarios: their programs are tracing programs (kprobe; raw_tp and
    kprobe), which PREEMPT_RT 5.7-6.0 may not give a NO_PREALLOC map."""
    rows = rows_of(pybpfmap(*stress("bullseye-rt", "--scenario", "allocator,reentry",
                                    "--types", "hash/no_prealloc,percpu_hash/no_prealloc",
                                    "--no-isolate"), timeout=1800))
    assert [(r["scenario"], r["kind"]) for r in rows] == [
        (s, k) for s in ("allocator", "reentry")
        for k in ("hash/no_prealloc", "percpu_hash/no_prealloc")]
    for row in rows:
        assert (row["outcome"], row["as_predicted"]) == ("REFUSED", True), row
        assert row["errors"] == {"load": {"EINVAL": 1}}
        assert "preallocated" in row["reasons"][0]


def test_negative_control_guest_panic_is_a_fail(pybpfmap):
    (row,) = rows_of(pybpfmap(*stress("bookworm", "--types", "hash/prealloc", "--inject",
                                      "panic"), expect=1, timeout=1800))
    assert (row["outcome"], row["as_predicted"]) == ("FAIL", False)
    assert row["vm"]["outcome"] == "panic"
