"""The kernel-era table: citations, predictions per scenario and map kind,
explained errnos and excused splats (pure functions, no kernel needed)."""

from __future__ import annotations

import errno
import re

import pytest

from pybpfmap import commits, era
from pybpfmap.kfacts import Fact, KernelFacts, Source
from pybpfmap.maps import MapSpec
from pybpfmap.splats import classify

HASH, PERCPU = MapSpec("hash", True), MapSpec("percpu_hash", True)
HASH_NO, PERCPU_NO = MapSpec("hash", False), MapSpec("percpu_hash", False)
LRU = MapSpec("lru_hash", True)


def K(release: str, preempt_rt: bool = False) -> KernelFacts:  # noqa: N802 - reads as a kernel
    """Every fact from the version: a kernel not probed."""
    return KernelFacts.assumed_from(release, preempt_rt)


def test_citations_are_drgn_style_and_unique():
    pattern = re.compile(r'^Linux kernel commit [0-9a-f]{12} \("[^"]+"\) \(in v\d+\.\d+\)$')
    for change in commits.CHANGES:
        assert pattern.match(change.cite()), change
    assert len({c.commit for c in commits.CHANGES}) == len(commits.CHANGES)
    assert commits.MAP_LOCKED.version == (5, 11)  # not 5.10: Debian's 5.10.262 has no map_locked


@pytest.mark.parametrize("change,commit,version", [
    # checked against the source and the stable review posts (docs/eras.md, "Facts checked
    # against the source"): the first mainline release, not the stable backports
    (commits.MAP_LOCKED_PREEMPT, "2775da216287", (6, 1)),
    (commits.LRU_EBUSY_LEAK, "b34ffb0c6d23", (6, 4)),
    (commits.PCPU_VALUE_CHECK, "1d244784be6b", (6, 12)),
    (commits.LRU_RQSPINLOCK, "89edbdfc5d03", (7, 2)),  # 6.12.113: raw; 7.2.13: rqspinlock
    (commits.RAW_TP_GUARD, "05b24ff9b2cf", (6, 1))])
def test_checked_changes(change, commit, version):
    assert (change.commit, change.version) == (commit, version)
    assert change in commits.CHANGES


@pytest.mark.parametrize("release,name", [
    ("5.10.0-46-amd64", "5.7-5.10"), ("5.11.0", "5.11-6.0"), ("6.1.0-50-amd64", "6.1-6.14"),
    ("6.12.117+deb13-amd64", "6.1-6.14"), ("7.3.4+deb13-amd64", "6.15+"), ("4.19.0", "4.6-5.6")])
def test_era_of(release, name):
    assert era.era_of(K(release)).name == name


@pytest.mark.parametrize("release,spec,rt,expect", [
    ("5.10.0-46-amd64", PERCPU_NO, False, era.Expect.DEADLOCK),
    ("5.10.0-46-amd64", HASH_NO, False, era.Expect.MAY_DEADLOCK),
    ("5.10.0-46-amd64", HASH, False, era.Expect.PASS),
    ("5.10.0-46-amd64", LRU, False, era.Expect.PASS),
    ("5.10.0-43-rt-amd64", PERCPU_NO, True, era.Expect.REFUSED),
    ("5.10.0-43-rt-amd64", HASH_NO, True, era.Expect.REFUSED),
    ("5.10.0-43-rt-amd64", HASH, True, era.Expect.PASS),
    ("6.1.0-50-amd64", PERCPU_NO, False, era.Expect.PASS),
    ("6.1.0-50-amd64", HASH_NO, False, era.Expect.PASS),
    ("7.3.4+deb13-amd64", HASH_NO, False, era.Expect.PASS),
])
def test_allocator_predictions(release, spec, rt, expect):
    p = era.allocator_prediction(K(release, rt), spec)
    assert p.expect is expect
    assert "Linux kernel commit" in p.why and p.changes


@pytest.mark.parametrize("release,expect,errnos", [
    ("5.10.0-46-amd64", era.Expect.DEADLOCK, ()),
    ("5.11.0", era.Expect.ERRNO, (errno.EBUSY,)),
    ("6.12.117+deb13-amd64", era.Expect.ERRNO, (errno.EBUSY,)),
    ("6.15.0", era.Expect.ERRNO, (errno.EDEADLK, errno.ETIMEDOUT)),
])
def test_reentry_predictions(release, expect, errnos):
    p = era.reentry_prediction(K(release))
    assert (p.expect, p.errnos) == (expect, errnos)


def test_reentry_on_preempt_rt_refuses_no_prealloc_until_6_1():
    """Both re-entry programs are tracing programs: on PREEMPT_RT 5.7-6.0 a
    NO_PREALLOC map is refused at load (2ed905c521e5), not deadlocked."""
    rt = era.reentry_prediction(K("5.10.0-43-rt-amd64", True), HASH_NO)
    assert (rt.expect, rt.errnos) == (era.Expect.REFUSED, (errno.EINVAL,))
    assert "2ed905c521e5" in rt.changes
    assert era.reentry_prediction(K("5.10.0-43-rt-amd64", True), HASH).expect is \
        era.Expect.DEADLOCK
    assert era.reentry_prediction(K("5.10.0"), HASH_NO).expect is era.Expect.DEADLOCK
    assert era.reentry_prediction(K("6.1.0", True), HASH_NO).errnos == (errno.EBUSY,)


def test_prediction_matching():
    busy = era.reentry_prediction(K("6.1.0"))
    assert busy.matches("PASS", {errno.EBUSY}) and not busy.matches("PASS", set())
    assert not busy.matches("DEADLOCK", set())
    dead = era.reentry_prediction(K("5.10.0"))
    assert dead.matches("DEADLOCK", set()) and not dead.matches("PASS", set())
    maybe = era.allocator_prediction(K("5.10.0"), HASH_NO)
    assert maybe.matches("PASS", set()) and maybe.matches("DEADLOCK", set())
    assert not maybe.matches("FAIL", set())
    refused = era.allocator_prediction(K("5.10.0-rt", True), HASH_NO)
    assert refused.matches("REFUSED", {errno.EINVAL})
    assert not refused.matches("REFUSED", {errno.EPERM})


def test_reentry_targets_follow_the_lock():
    assert era.reentry_targets(K("5.10.0"), HASH)[:2] == ["lookup_elem_raw", "alloc_htab_elem"]
    assert "_raw_spin_unlock_irqrestore" in era.reentry_targets(K("6.1.0"), HASH)
    assert "alloc_htab_elem" not in era.reentry_targets(K("6.1.0"), LRU)
    assert era.reentry_targets(K("7.3.4"), LRU) == ["lookup_elem_raw"]  # rqspinlock: no unlock fn
    # LRU kinds: the unlock functions also release the LRU lists' locks (taken before
    # the bucket's), where a nested update would deadlock in any era: never offered
    for release in ("5.10.0", "6.1.0", "6.12.0"):
        assert era.reentry_targets(K(release), LRU) == ["lookup_elem_raw"], release


@pytest.mark.parametrize("release,err,explained", [
    ("5.10.0", errno.EBUSY, False),
    ("5.11.0", errno.EBUSY, True),
    ("6.14.2", errno.EBUSY, True),
    ("6.15.0", errno.EBUSY, False),
    ("6.15.0", errno.EDEADLK, True),
    ("7.3.4", errno.ETIMEDOUT, True),
    ("6.12.57", errno.EDEADLK, False),
    ("6.12.57", errno.EINVAL, False),
])
def test_reentry_errno_is_explained_only_in_its_era(release, err, explained):
    assert (era.explain_error(K(release), HASH, "update", err) is not None) is explained


def test_enoent_and_enomem_explanations():
    assert era.explain_error(K("6.1.0"), HASH, "lookup", errno.ENOENT, 2, 2)
    assert era.explain_error(K("6.1.0"), HASH, "lookup", errno.ENOENT, 2, 5) is None
    assert era.explain_error(K("6.1.0"), HASH_NO, "update", errno.ENOMEM) is not None
    assert era.explain_error(K("6.1.0"), HASH, "update", errno.ENOMEM) is None


WARN = """\
[    5.100000] trace type BPF program uses run-time allocation
[    5.100001] WARNING: CPU: 1 PID: 242 at kernel/bpf/verifier.c:10519 bpf_check+0x1e7f/0x2a20
[    5.100002] Modules linked in: 9p
[    5.100003] CPU: 1 PID: 242 Comm: python3 Not tainted 5.10.0-46-amd64 #1 Debian 5.10.262-1
[    5.100004] Call Trace:
[    5.100005]  bpf_prog_load+0x3e4/0x8e0
[    5.100006] ---[ end trace 4a5c1b2d3e4f5a6b ]---
"""


def test_the_5_7_to_6_0_warn_is_excused_once_and_only_there():
    allowed = era.expected_splats(K("5.10.0-46-amd64"), [HASH_NO])
    found, excused = classify(WARN, allowed)
    assert (found, len(excused)) == ([], 1)
    # the same WARN twice in one boot: the second is reported (WARN_ONCE cannot repeat)
    found, excused = classify(WARN + WARN.replace("5.1", "9.1"), allowed)
    assert len(found) == 1 and len(excused) == 1
    assert era.expected_splats(K("5.10.0-46-amd64"), [HASH]) == []   # preallocated only
    assert era.expected_splats(K("6.1.0-50-amd64"), [HASH_NO]) == []  # removed in v6.1
    assert era.expected_splats(K("5.10.0-43-rt-amd64", True), [HASH_NO]) == []
    # another WARN in verifier.c is not excused by it
    other = WARN.replace("trace type BPF program uses run-time allocation", "something else")
    assert len(classify(other, allowed)[0]) == 1


def test_expectations_cite_their_commits():
    lines = era.expectations(K("5.10.0-46-amd64"))
    assert any("RLIMIT_MEMLOCK" in line and commits.NO_RLIMIT.commit in line for line in lines)
    assert any("DEADLOCK" in line and commits.MAP_LOCKED.commit in line for line in lines)
    assert not any("RLIMIT_MEMLOCK" in line for line in era.expectations(K("6.1.0")))


def _with(kernel: KernelFacts, *facts: Fact) -> KernelFacts:
    return KernelFacts(kernel.release, kernel.preempt_rt,
                       {**kernel.facts, **{f.change: f for f in facts}})


def test_a_backport_gets_the_prediction_its_code_earns():
    """5.10 built with the map_locked patches: BTF shows map_locked, so re-entry
    is refused with EBUSY (and explained), not the version's DEADLOCK."""
    stock = K("5.10.262")
    patched = _with(stock, Fact(commits.MAP_LOCKED, True, Source.PROBED,
                                "BTF: struct bpf_htab has member map_locked"))
    assert era.reentry_prediction(stock).expect is era.Expect.DEADLOCK
    p = era.reentry_prediction(patched, HASH)
    assert (p.expect, p.errnos) == (era.Expect.ERRNO, (errno.EBUSY,))
    assert "20b6cc34ea74 present (probed: BTF: struct bpf_htab has member map_locked)" \
        in p.basis()
    assert "4fa8d68aa53e absent (version: version 5.10 < 6.15)" in p.basis()
    assert era.explain_error(patched, HASH, "update", errno.EBUSY) is not None
    assert era.explain_error(stock, HASH, "update", errno.EBUSY) is None
    assert era.era_of(patched).name == "5.11-6.0"
    assert any("20b6cc34ea74" in line and "probed" in line
               for line in era.expectations(patched))
    assert era.expectations(stock)[-1] == ("every fact from the version (this kernel was "
                                           "not probed)")


def test_a_probed_absence_overrides_the_version():
    """A 6.1 whose BTF shows no ``ma`` (bpf_mem_alloc not there) allocates
    under the bucket lock like 5.x, whatever its version says."""
    odd = _with(K("6.1.0-50-amd64"), Fact(commits.MEM_ALLOC, False, Source.PROBED,
                                          "BTF: struct bpf_htab has no member ma"))
    assert era.allocator_prediction(K("6.1.0-50-amd64"), HASH_NO).expect is era.Expect.PASS
    p = era.allocator_prediction(odd, HASH_NO)
    assert p.expect is era.Expect.MAY_DEADLOCK and p.facts[0].source is Source.PROBED
