"""The era facts: the BTF parser (a synthetic blob and this kernel's own),
kallsyms, the verifier's answer, and how records carry facts."""

from __future__ import annotations

import os
import struct

import pytest

from pybpfmap import btf, commits, kfacts
from pybpfmap.kernel import Kernel
from pybpfmap.kfacts import Fact, KernelFacts, Source
from pybpfmap.records import from_json, to_json

# --- the parser on blobs built here -----------------------------------------


def _blob(order: str = "<") -> bytes:
    """Every kind with trailing data before ``struct bpf_htab``, so that a wrong
    trailing size for any of them loses the struct (or fails the parse)."""
    strings = bytearray(b"\0")

    def s(text: str) -> int:
        off = len(strings)
        strings.extend(text.encode() + b"\0")
        return off

    def t(name: str, kind: int, vlen: int, ref: int) -> bytes:
        return struct.pack(order + "3I", s(name) if name else 0, kind << 24 | vlen, ref)

    types = b"".join([
        t("int", btf.INT, 0, 4) + struct.pack(order + "I", 32),                     # 1
        t("", btf.ARRAY, 0, 0) + struct.pack(order + "3I", 1, 1, 4),                # 2
        t("e", btf.ENUM, 2, 4) + struct.pack(order + "2I", s("A"), 0)
        + struct.pack(order + "2I", s("B"), 1),                                      # 3
        t("", btf.FUNC_PROTO, 1, 1) + struct.pack(order + "2I", 0, 1),              # 4
        t("v", btf.VAR, 0, 1) + struct.pack(order + "I", 1),                        # 5
        t(".data", btf.DATASEC, 1, 4) + struct.pack(order + "3I", 5, 0, 4),         # 6
        t("tag", btf.DECL_TAG, 0, 5) + struct.pack(order + "i", -1),               # 7
        t("e64", btf.ENUM64, 1, 8) + struct.pack(order + "3I", s("C"), 1, 0),       # 8
        t("raw_spinlock_t", btf.TYPEDEF, 0, 1),                                      # 9
        t("bucket", btf.STRUCT, 2, 8) + struct.pack(order + "3I", s("head"), 1, 0)
        + struct.pack(order + "3I", s("raw_lock"), 9, 32),                           # 10
        t("", btf.PTR, 0, 10),                                                       # 11
        t("", btf.CONST, 0, 11),                                                     # 12
        t("bpf_htab", btf.STRUCT, 3, 24) + struct.pack(order + "3I", s("buckets"), 12, 0)
        + struct.pack(order + "3I", s("count"), 1, 64)
        + struct.pack(order + "3I", s("map_locked"), 2, 96),                         # 13
    ])
    header = struct.pack(order + "HBB5I", btf.MAGIC, 1, 0, 24, 0, len(types), len(types),
                         len(strings))
    return header + types + bytes(strings)


@pytest.mark.parametrize("order", ["<", ">"])
def test_btf_parser_walks_every_kind_to_the_struct(order):
    b = btf.Btf.parse(_blob(order))
    assert len(b.types) == 14
    assert b.members("bpf_htab") == {"buckets": "struct bucket *", "count": "int",
                                     "map_locked": "int[]"}
    bucket = b.member_struct("bpf_htab", "buckets")
    assert bucket is not None and b.members_of(bucket)["raw_lock"] == "raw_spinlock_t"
    assert b.members("nope") is None


def test_btf_parser_refuses_what_is_not_btf():
    with pytest.raises(btf.BtfError):
        btf.Btf.parse(b"\0" * 40)
    with pytest.raises(btf.BtfError):
        btf.Btf.parse(_blob()[:-30])   # sections run past the end


def test_btf_facts_from_a_synthetic_5_10_and_6_1_htab():
    old = btf.Btf.parse(btf.synthetic_btf("bpf_htab", [("map", "int"), ("hashrnd", "u32")]))
    facts = {f.change: f for f in kfacts.btf_facts(old)}
    assert not facts[commits.MAP_LOCKED].present
    assert facts[commits.MAP_LOCKED].source is Source.PROBED
    assert not facts[commits.MEM_ALLOC].present and not facts[commits.PERCPU_MEM_ALLOC].present
    new = btf.Btf.parse(btf.synthetic_btf("bpf_htab", [("ma", "int"), ("pcpu_ma", "int"),
                                                       ("map_locked", "int")]))
    facts = {f.change: f for f in kfacts.btf_facts(new)}
    assert all(facts[c].present for c in (commits.MAP_LOCKED, commits.MEM_ALLOC,
                                          commits.PERCPU_MEM_ALLOC))
    assert kfacts.btf_facts(btf.Btf.parse(btf.synthetic_btf("other", [("a", "int")]))) == []


def test_the_rqspinlock_bucket_is_the_reentry_guard():
    """4fa8d68aa53e removed map_locked: an rqspinlock_t bucket lock still
    means re-entry is detected (MAP_LOCKED present), and RQSPINLOCK is."""
    b = btf.Btf.parse(_blob())
    b.types[9] = btf.BtfType(btf.TYPEDEF, "rqspinlock_t", 1)
    htab = b.types[13]
    b.types[13] = btf.BtfType(htab.kind, htab.name, htab.ref, htab.members[:2])
    facts = {f.change: f for f in kfacts.btf_facts(b)}
    assert facts[commits.RQSPINLOCK].present and facts[commits.MAP_LOCKED].present
    assert "rqspinlock_t" in facts[commits.MAP_LOCKED].how


def test_kallsyms_facts():
    text = ("ffffffff81000000 T _stext\nffffffff82262 T resilient_tas_spin_lock\n"
            "ffffffff8155aa70 T bpf_mem_alloc\n")
    facts = {f.change: f for f in kfacts.kallsyms_facts(text)}
    assert facts[commits.RQSPINLOCK].present and facts[commits.MEM_ALLOC].present
    facts = {f.change: f for f in kfacts.kallsyms_facts("0 T _stext\n")}
    assert not facts[commits.RQSPINLOCK].present and not facts[commits.MEM_ALLOC].present
    assert kfacts.kallsyms_facts("") == []


# --- this kernel ---------------------------------------------------------------


def _this_btf() -> btf.Btf:
    b = btf.read_vmlinux()
    if b is None:
        pytest.skip(f"no {btf.VMLINUX} (probed: kernel built without CONFIG_DEBUG_INFO_BTF)")
    if b.members("bpf_htab") is None:
        pytest.skip("probed: struct bpf_htab is not in this kernel's BTF")
    return b


def _kallsyms() -> set[str]:
    with open(kfacts.KALLSYMS) as f:
        return {line.split()[2] for line in f if len(line.split()) >= 3}


@pytest.mark.guest
def test_this_kernels_btf_and_kallsyms_agree():
    """Two independent sources: where kallsyms has the resilient spinlock, the
    BTF bucket lock is rqspinlock_t and map_locked is gone (the host's 6.18);
    where it has not, the bucket lock is a raw_spinlock_t."""
    b = _this_btf()
    members = b.members("bpf_htab")
    bucket = b.member_struct("bpf_htab", "buckets")
    assert bucket is not None and "raw_lock" in b.members_of(bucket)
    lock = b.members_of(bucket)["raw_lock"]
    facts = kfacts.probe()
    rq = facts.fact(commits.RQSPINLOCK)
    assert rq.source is Source.PROBED and rq.how.startswith("BTF")
    if any(s in _kallsyms() for s in kfacts.RQSPINLOCK_SYMBOLS):
        assert lock == "rqspinlock_t" and "map_locked" not in members
        assert rq.present and facts.fact(commits.MAP_LOCKED).present
    else:
        assert lock == "raw_spinlock_t" and not rq.present
        assert facts.fact(commits.MAP_LOCKED).present is ("map_locked" in members)
    for change, member in ((commits.MEM_ALLOC, "ma"), (commits.PERCPU_MEM_ALLOC, "pcpu_ma")):
        f = facts.fact(change)
        assert (f.source, f.present) == (Source.PROBED, member in members)


@pytest.mark.guest
@pytest.mark.root
def test_the_verifier_answers_for_this_kernel():
    """A tracepoint program with a NO_PREALLOC hash map: loaded silently since
    96da3f7d489d (the host), with the 'unsafe' note on 5.7-6.0, refused on RT."""
    release = os.uname().release
    facts = {f.change: f for f in kfacts.verifier_facts(release)}
    assert facts and all(f.source is Source.PROBED for f in facts.values())
    if kfacts.preempt_rt() and commits.RT_PREALLOC in facts:
        assert facts[commits.RT_PREALLOC].present
    elif kfacts.version(release) >= commits.WARN_REMOVED.version:
        assert facts[commits.WARN_REMOVED].present
    else:
        assert not facts[commits.WARN_REMOVED].present


@pytest.mark.guest
@pytest.mark.root
def test_accounting_facts_are_probed_as_root():
    facts = {f.change: f for f in kfacts.accounting_facts()}
    assert facts[commits.NO_RLIMIT].source is Source.PROBED
    if not facts[commits.NO_RLIMIT].present:   # charged to RLIMIT_MEMLOCK: before 6.4 too
        assert not facts[commits.MEMORY_USAGE].present


# --- records ---------------------------------------------------------------------


def test_assumed_facts_say_so_and_round_trip_through_records():
    k = KernelFacts.assumed_from("5.10.0-46-amd64", preempt_rt=True)
    assert k.probed() == [] and len(k.assumed()) == len(commits.CHANGES)
    assert not k.has(commits.MAP_LOCKED) and k.has(commits.TIGHTEN)
    assert k.fact(commits.MAP_LOCKED).how == "version 5.10 < 5.11"
    first = k.to_json()[0]
    assert set(first) == {"commit", "subject", "version", "present", "source", "how"}
    assert first["source"] == "version"
    probed = KernelFacts(k.release, True, {**k.facts, commits.MAP_LOCKED: Fact(
        commits.MAP_LOCKED, True, Source.PROBED, "BTF: struct bpf_htab has member map_locked")})
    back = KernelFacts.from_records(k.release, True, from_json(Kernel, {
        **_kernel_json(), "facts": probed.to_json()}).facts)
    assert back.has(commits.MAP_LOCKED) and back.fact(commits.MAP_LOCKED).source is Source.PROBED
    assert [f.describe() for f in back.probed()] == [
        "20b6cc34ea74 present (probed: BTF: struct bpf_htab has member map_locked)"]
    assert any(line.startswith("+ 20b6cc34ea74") and "probed" in line for line in back.render())


def _kernel_json() -> dict:
    k = Kernel("5.10.0-46-amd64", True, True, "", True, "kvm", None,
               {"available": True, "enabled": False, "reason": ""}, [])
    return to_json(k)


def test_for_release_probes_only_the_running_kernel():
    assert KernelFacts.assumed_from("6.1.0").facts == kfacts.for_release("6.1.0").facts
    assert kfacts.for_release(os.uname().release) is kfacts.probe()
