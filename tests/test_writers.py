"""The writers scenario: the era's explanations and prediction, the verdict on
made-up rows, user space's latency sample and its merge across processes, the
batch command's layout (no kernel needed); one writer's ops on a real map
(root); and the scenario itself in the test VM (guest)."""

from __future__ import annotations

import ctypes
import errno
import random

import pytest

from pybpfmap import bpfsys, commits, era, guest
from pybpfmap.kfacts import KernelFacts
from pybpfmap.maps import MapSpec
from pybpfmap.stress import userspace, verdict, writers
from pybpfmap.stress.kinds import BY_NAME
from pybpfmap.stress.latency import Latency
from pybpfmap.stress.records import ProbeStats
from tests.helpers import json_out

HASH, HASH_NO, LRU = MapSpec("hash", True), MapSpec("hash", False), MapSpec("lru_hash", True)
R510, R515, R61, R73 = "5.10.0-46-amd64", "5.15.0", "6.1.0-50-amd64", "7.3.0-1-amd64"


def K(release: str, rt: bool = False) -> KernelFacts:  # noqa: N802 - reads as a kernel
    return KernelFacts.assumed_from(release, rt)


# -- the era: explanations and prediction -------------------------------------------

@pytest.mark.parametrize("op,err,spec,release,explained", [
    ("user delete", errno.ENOENT, HASH, R61, True),       # another writer deleted it
    ("user gc", errno.ENOENT, HASH, R61, True),
    ("user batch", errno.ENOENT, HASH, R61, True),        # the end of the map
    ("user update", errno.ENOENT, HASH, R61, False),      # BPF_ANY: never
    ("user update", errno.E2BIG, HASH, R61, True),        # the map full
    ("user update", errno.E2BIG, HASH_NO, R510, True),    # the element counter
    ("user update", errno.E2BIG, LRU, R61, False),        # an LRU map evicts instead
    ("user delete", errno.E2BIG, HASH, R61, False),
    ("user update", errno.EEXIST, HASH, R61, False),      # BPF_ANY: never
    ("user update", errno.ENOMEM, HASH_NO, R61, True),    # bpf_mem_alloc's cache
    ("user update", errno.ENOMEM, LRU, R61, True),        # no node to reuse
    ("user update", errno.ENOMEM, HASH, R61, False),      # preallocated: E2BIG instead
    ("user update", errno.EBUSY, HASH, R515, True),       # preempted inside map_locked
    ("user delete", errno.EBUSY, HASH, R515, True),
    ("user update", errno.EBUSY, HASH, R61, False),       # map_locked with preemption off
    ("user update", errno.EBUSY, HASH, R510, False),      # no map_locked at all
    ("user update", errno.EBUSY, HASH, R73, False),       # rqspinlock: no map_locked
    ("user batch", errno.ETIMEDOUT, HASH, R73, True),
    ("user update", errno.EDEADLK, HASH, R73, True),
    ("user update", errno.EDEADLK, HASH, R61, False),
    ("user batch", errno.EINVAL, HASH, R61, False),       # the batch op exists since 5.6
    ("update", errno.ENOENT, HASH, R61, False),           # not a user op
])
def test_user_errors_are_explained_by_era(op, err, spec, release, explained):
    why = era.explain_user_error(K(release), spec, op, err)
    assert (why is not None) == explained, why


def test_the_programs_inserts_are_explained_and_the_other_scenarios_unchanged():
    assert "BPF_NOEXIST" in era.explain_error(K(R61), HASH, "insert", errno.EEXIST)
    assert "free list" in era.explain_error(K(R61), HASH, "insert", errno.E2BIG)
    assert "element count" in era.explain_error(K(R61), HASH_NO, "insert", errno.E2BIG)
    assert era.explain_error(K(R61), LRU, "insert", errno.E2BIG) is None
    assert "bpf_mem_alloc" in era.explain_error(K(R61), HASH_NO, "insert", errno.ENOMEM)
    # an insert's EBUSY needs the preemption window, not just map_locked
    assert era.explain_error(K(R61), HASH, "insert", errno.EBUSY) is None
    assert era.explain_error(K(R515), HASH, "insert", errno.EBUSY) is not None
    # the other scenarios' update never fills its map: E2BIG and EEXIST stay unexplained
    assert era.explain_error(K(R61), HASH, "update", errno.E2BIG) is None
    assert era.explain_error(K(R61), HASH, "update", errno.EEXIST) is None
    assert era.explain_error(K(R61), HASH, "update", errno.EBUSY) is not None


@pytest.mark.parametrize("release", [R510, R515, R61, "6.8.0", R73])
@pytest.mark.parametrize("spec", [HASH, HASH_NO, LRU, MapSpec("percpu_hash", False)])
def test_writers_pass_in_every_era(release, spec):
    p = era.writers_prediction(K(release), spec)
    assert p.expect is era.Expect.PASS, p.why
    assert "bpf_prog_active" in p.why
    assert all(c in {x.commit for x in commits.CHANGES} for c in p.changes)
    # the era's EBUSY window is named where it is open, and its fix where it is closed
    if release == R515:
        assert commits.MAP_LOCKED_PREEMPT.commit in p.changes and "-EBUSY" in p.why
    assert (commits.MISSED_STATS.commit in p.changes) == K(release).has(commits.MISSED_STATS)


def test_writers_on_rt_with_no_prealloc_are_refused_as_any_tracing_program():
    p = era.writers_prediction(K("5.10.0-46-rt-amd64", rt=True), HASH_NO)
    assert (p.expect, p.errnos) == (era.Expect.REFUSED, (errno.EINVAL,))
    assert era.writers_prediction(K("5.10.0-46-rt-amd64", rt=True), HASH).expect is \
        era.Expect.PASS


# -- the verdict ---------------------------------------------------------------------

def _row(user=None, inserts=None, guard_in_writers=0):
    row = writers.new_row(BY_NAME["hash/prealloc"])
    inserts = inserts or {"ok": 50, "EEXIST": 40, "E2BIG": 10}
    user = user or {"user update": {"ok": 90, "E2BIG": 10}, "user delete": {"ENOENT": 5},
                    "user batch": {"ok": 3, "ENOENT": 1}, "user gc": {"ok": 7}}
    row.per_probe = [
        ProbeStats("sys_enter (getppid)", "raw_tp", sum(inserts.values()), {"insert": inserts}),
        ProbeStats("htab_map_update_elem", "kprobe", 100 + guard_in_writers, {},
                   recursion_misses=None),
        ProbeStats("2 writer processes", "syscall", 116, user),
    ]
    row.events = row.per_probe[0].events
    row.errors = {op: errs for p in row.per_probe for op, errs in p.errors().items()}
    row.heartbeat_max_delay_s = 0.01
    row.workloads = {"stressed": {"writer cpu0": {"ops": 60}, "writer cpu1": {"ops": 56}},
                     "guard": {"target": "htab_map_update_elem",
                               "runs_in_writers": guard_in_writers, "runs_elsewhere": 100}}
    return row


def test_a_writers_row_with_its_expected_errors_passes_as_predicted():
    row = verdict.judge(_row(), K(R61), "")
    assert (row.outcome, row.as_predicted) == ("PASS", True), row.reasons
    assert set(row.explained) == {"insert:EEXIST", "insert:E2BIG", "user update:E2BIG",
                                  "user delete:ENOENT", "user batch:ENOENT"}


def test_an_ebusy_the_era_closed_fails_the_row():
    user = {"user update": {"ok": 90, "EBUSY": 1}}
    row = verdict.judge(_row(user=user), K(R61), "")
    assert row.outcome == "FAIL" and row.as_predicted is False
    assert row.reasons == ["user update returned EBUSY 1x: not explained for kernel "
                           f"{K(R61).release}"]
    assert verdict.judge(_row(user=user), K(R515), "").outcome == "PASS"


def test_the_guard_running_inside_a_writer_fails_the_row():
    row = verdict.judge(_row(guard_in_writers=3), K(R61), "")
    assert row.outcome == "FAIL"
    assert row.reasons == ["the guard kprobe on htab_map_update_elem ran 3x inside the "
                           "writers' bpf(2) updates: bpf_prog_active was not raised there"]


def test_a_writer_that_failed_fails_the_row():
    row = _row()
    row.workloads["stressed"]["writer cpu1"] = {"ops": 0, "error": "OSError: boom"}
    assert verdict.judge(row, K(R61), "").outcome == "FAIL"


# -- user space's latency --------------------------------------------------------------

def test_the_reservoir_keeps_a_bounded_sample_of_the_whole_stream_and_the_exact_max():
    rng = random.Random(1)
    r = userspace.Reservoir(size=100)
    for ns in range(10_000):
        r.add(ns, rng)
    assert (r.seen, len(r.samples), r.max_ns) == (10_000, 100, 9_999)
    assert len(set(r.samples)) == 100 and max(r.samples) > 5_000   # not just the first 100


def test_merged_latency_weighs_each_writer_by_its_updates():
    busy = userspace.Reservoir(100, seen=1_000, max_ns=50, samples=[10] * 100)
    slow = userspace.Reservoir(100, seen=100, max_ns=90_000, samples=[1_000] * 100)
    lat = userspace.user_latency([busy, slow, userspace.Reservoir()])
    # 100 of busy's samples stand for its 1000 updates, 10 of slow's for its 100
    assert (lat.count, lat.p50_ns, lat.max_ns, lat.exact) == (110, 10, 90_000, True)
    assert lat.log2_ns == {"8": 100, "512": 10}
    assert lat.p99_ns == 1_000
    assert userspace.user_latency([]) == Latency()


# -- bpf(2) ----------------------------------------------------------------------------

def test_the_batch_attr_is_union_bpf_attrs_batch_member():
    a = bpfsys._BatchAttr
    assert ctypes.sizeof(a) == 128 and bpfsys.MAP_LOOKUP_AND_DELETE_BATCH == 25
    assert [(n, getattr(a, n).offset) for n, _ in a._fields_[:-1]] == [
        ("in_batch", 0), ("out_batch", 8), ("keys", 16), ("values", 24), ("count", 32),
        ("map_fd", 36), ("elem_flags", 40), ("flags", 48)]


def test_the_key_range_is_larger_than_the_map():
    assert writers.key_range(HASH) == 1536 > HASH.max_entries
    assert set(writers.GUARD_TARGETS) == {"hash", "percpu_hash", "lru_hash", "lru_percpu_hash"}


@pytest.mark.root
@pytest.mark.parametrize("kind", ["hash/prealloc", "hash/no_prealloc", "lru_percpu_hash/prealloc"])
def test_a_writers_round_runs_every_op_on_a_real_map(kind):
    spec = BY_NAME[kind].spec
    with spec.create() as m:
        w = userspace.Writer(m.fd, spec, writers.key_range(spec), seed=0)
        w.round()
        w.round()
        # one writer and no program: its GC pass leaves nothing behind
        with pytest.raises(bpfsys.BpfSyscallError) as e:
            bpfsys.next_key(m.fd, None, w.next)
        assert e.value.errno == errno.ENOENT
    updates = w.results["user update"]
    assert sum(updates.values()) == w.latency.seen == 2 * writers.key_range(spec)
    # a full map refuses new keys, an LRU map evicts instead
    assert set(updates) == ({"ok"} if spec.lru else {"ok", "E2BIG"})
    assert w.results["user delete"]["ok"] and w.results["user gc"]["ok"]
    assert w.no_batch is None and 0 < w.moved <= 2 * userspace.BATCH_COUNT
    assert set(w.results["user batch"]) <= {"ok", "ENOENT"}


# -- in the test VM ----------------------------------------------------------------------

@pytest.mark.guest
@pytest.mark.root
def test_writers_row_counts_both_sides(pybpfmap):
    if not guest.in_test_vm():   # elsewhere the command would boot one, or need --force
        pytest.skip("runs inside the test VM (pybpfmap vm test)")
    (run,) = json_out(pybpfmap("stress", "--scenario", "writers", "--types", "hash/prealloc",
                               "--duration", "3", "--json"))
    (row,) = run["rows"]
    assert (row["outcome"], row["as_predicted"]) == ("PASS", True), row["reasons"]
    program, *_, user = row["per_probe"]
    assert program["events"] > 0 and sum(program["results"]["insert"].values()) > 0
    assert program["latency"]["count"] == program["events"]
    softirq = next(p for p in row["per_probe"] if p["kind"] == "xdp")   # the veth's inserter
    assert softirq["events"] > 0 and softirq["latency"]["count"] == softirq["events"]
    assert user["kind"] == "syscall" and set(user["results"]) == {
        f"user {op}" for op in userspace.OPS}
    assert all(sum(res.values()) > 0 for res in user["results"].values()), user["results"]
    lat = user["latency"]
    assert lat["exact"] and 0 < lat["p50_ns"] <= lat["p99_ns"] <= lat["max_ns"]
    assert lat["count"] == sum(lat["log2_ns"].values()) > 0
    assert all(w["ops"] > 0 for w in row["workloads"]["stressed"].values())
    guard = row["workloads"].get("guard")
    if guard is not None:   # kprobes here: the guard ran in the inserts, never in a writer
        assert guard["runs_in_writers"] == 0 and guard["runs_elsewhere"] > 0
        # every writer's update hit the kprobe, whose program was skipped there
        assert guard["skipped"] >= sum(user["results"]["user update"].values())
