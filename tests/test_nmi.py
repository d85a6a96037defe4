"""The NMI scenarios' parts that need no guest: where keys land in a hash map,
the latency record, the control-port request, the host's QMP injector (against
a fake monitor) and the era's predictions."""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from pybpfmap import commits, era, guest, htab, procs
from pybpfmap.kfacts import KernelFacts, stable_version
from pybpfmap.maps import MapSpec
from pybpfmap.stress import nmi
from pybpfmap.stress.kinds import BY_NAME
from pybpfmap.stress.latency import Latency
from pybpfmap.vm.nmi import NmiInjector

HASH, HASH_NO = MapSpec("hash", True), MapSpec("hash", False)
LRU = MapSpec("lru_hash", True)


def K(release: str, rt: bool = False, stable=None) -> KernelFacts:  # noqa: N802
    return KernelFacts.assumed_from(release, rt, stable)


# -- where a key lands ---------------------------------------------------------------

def test_jhash_agrees_with_itself_across_its_two_forms():
    # a 4-byte key: jhash2 over one word and jhash over 4 bytes are the same lookup3
    for n in (0, 1, 2, 0xDEADBEEF):
        key = n.to_bytes(4, "little")
        assert htab.key_hash(key) == htab.jhash(key, 0)
    assert htab.key_hash(b"\x01\x00\x00\x00", 1) != htab.key_hash(b"\x01\x00\x00\x00", 0)


def test_other_slot_key_shares_the_bucket_not_the_old_slot():
    key = htab.other_slot_key(nmi.HOLD_KEY, nmi.SLOT_MAX_ENTRIES)
    h0 = htab.key_hash(nmi.HOLD_KEY.to_bytes(4, "little"))
    h1 = htab.key_hash(key.to_bytes(4, "little"))
    assert key != nmi.HOLD_KEY
    assert htab.bucket(h0, 4) == htab.bucket(h1, 4)
    assert htab.lock_slot(h0, 4, hash_mask=False) != htab.lock_slot(h1, 4, hash_mask=False)
    assert htab.lock_slot(h0, 4, hash_mask=True) == htab.lock_slot(h1, 4, hash_mask=True)
    assert htab.n_buckets(4) == 4 and htab.n_buckets(5) == 8 and htab.n_buckets(1) == 1
    with pytest.raises(ValueError, match="one bucket, one slot"):
        htab.other_slot_key(1, 1024)


def test_the_slot_row_uses_a_zero_seed_map_of_four_entries():
    keys = nmi.keys_for(BY_NAME["hash/prealloc"], other_slot=True)
    assert keys.kind.spec.max_entries == 4 and keys.kind.spec.extra_flags & htab.F_ZERO_SEED
    assert keys.nmi != keys.hold and "bucket" in keys.note
    assert "(BPF_F_NO_PREALLOC|0x40)" in " ".join(
        nmi.keys_for(BY_NAME["hash/no_prealloc"], True).kind.spec.cflags())
    same = nmi.keys_for(BY_NAME["hash/prealloc"], other_slot=False)
    assert same.nmi == same.hold and same.kind.spec.max_entries == 1024


# -- latency -----------------------------------------------------------------------

def test_latency_from_log2_slots_is_an_upper_bound():
    slots = [0] * 40
    slots[9] = 98          # 512..1023 ns
    slots[27] = 2          # ~134..268 ms: two lock timeouts
    lat = Latency.from_log2(slots, max_ns=250_000_000)
    assert (lat.count, lat.p50_ns, lat.max_ns, lat.exact) == (100, 1023, 250_000_000, False)
    assert lat.p99_ns == 250_000_000          # the 99th is in the top slot, capped by the max
    assert lat.log2_ns == {"512": 98, "134217728": 2}
    assert "p50 <=1.02 us" in lat.brief() and "max 250 ms" in lat.brief()
    assert Latency.from_log2([0] * 40, None).brief() == "none"


def test_latency_from_samples_is_exact():
    lat = Latency.from_samples(range(1, 101))
    assert (lat.p50_ns, lat.p99_ns, lat.max_ns, lat.exact) == (50, 99, 100, True)


# -- the request and the injector ---------------------------------------------------

def test_the_nmi_request_is_a_control_port_message(monkeypatch):
    assert guest.parse_ctl("nmi 1000") == guest.Nmi(1000.0)
    assert guest.parse_ctl("nmi fast") is None
    monkeypatch.delenv(guest.ENV_KERNEL, raising=False)
    assert "--kernel K" in guest.nmi_unavailable()
    monkeypatch.setenv(guest.ENV_KERNEL, "bookworm")
    monkeypatch.delenv(guest.ENV_NMI, raising=False)
    assert "does not inject NMIs" in guest.nmi_unavailable()
    assert guest.ENV_NMI in guest.env_sh("/repo", "bookworm", "tcg", {})
    # a parent that closed the port (subprocess does, unless given pass_fds) is said so
    monkeypatch.setenv(guest.ENV_NMI, "qmp")
    r, w = os.pipe()
    os.close(r)
    monkeypatch.setenv(guest.ENV_CTL_FD, str(w))
    assert guest.control_fds() == (w,) and guest.nmi_unavailable() is None
    os.close(w)
    assert guest.control_fds() == () and "is not open" in guest.nmi_unavailable()


class FakeQmp:
    """A QMP monitor on a unix socket that counts inject-nmi (or refuses it)."""

    def __init__(self, path: Path, refuse: bool = False):
        self.path, self.refuse, self.nmis = path, refuse, 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn, conn.makefile("rwb") as f:
            f.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
            f.flush()
            for line in f:
                cmd = json.loads(line)["execute"]
                if cmd == "inject-nmi" and self.refuse:
                    reply = {"error": {"class": "GenericError", "desc": "no NMI here"}}
                else:
                    self.nmis += cmd == "inject-nmi"
                    reply = {"return": {}}
                f.write(b'{"event": "NOISE", "data": {}}\n' + json.dumps(reply).encode() + b"\n")
                f.flush()

    def close(self) -> None:
        self.server.close()


def test_the_injector_sends_at_the_rate_asked_and_stops(tmp_path):
    qmp = FakeQmp(tmp_path / "nmi.sock")
    inj = NmiInjector(qmp.path)
    try:
        inj.set_rate(0)
        assert inj.sent == 0 and inj._thread is None     # nothing until asked
        inj.set_rate(200)
        assert procs.wait_until(lambda: inj.sent >= 20, 10)
        inj.set_rate(0)
        # the call in flight ends, and qemu (the fake) saw every NMI counted
        assert procs.wait_until(lambda: qmp.nmis == inj.sent, 5)
        stopped = inj.sent
    finally:
        inj.close()
        qmp.close()
    assert not inj._thread.is_alive() and inj.sent == stopped >= 20
    assert inj.problem is None


def test_the_injector_says_why_it_stopped(tmp_path):
    qmp = FakeQmp(tmp_path / "nmi.sock", refuse=True)
    inj = NmiInjector(qmp.path)
    inj.set_rate(100)
    procs.wait_until(lambda: inj.problem, 10)
    inj.close()
    qmp.close()
    assert inj.problem == "NMI injection stopped after 0 NMIs: inject-nmi: no NMI here"
    gone = NmiInjector(tmp_path / "absent.sock")
    gone.set_rate(10)
    gone.close()
    assert "stopped after 0 NMIs" in gone.problem


# -- the era's predictions -------------------------------------------------------------

@pytest.mark.parametrize("kernel,spec,slot,expect,errnos", [
    (K("5.10.0-46-amd64"), HASH, False, era.Expect.DEADLOCK, ()),
    (K("5.10.0-46-amd64"), HASH, True, era.Expect.DEADLOCK, ()),
    (K("5.10.0-46-rt-amd64", rt=True), HASH_NO, False, era.Expect.REFUSED, (errno.EINVAL,)),
    (K("5.10.0-46-rt-amd64", rt=True), HASH, False, era.Expect.DEADLOCK, ()),
    (K("5.15.0"), HASH, False, era.Expect.ERRNO, (errno.EBUSY,)),
    (K("5.15.0"), HASH, True, era.Expect.DEADLOCK, ()),            # before HASH_MASK
    (K("6.1.0-50-amd64", stable=(6, 1, 176)), HASH, True, era.Expect.ERRNO, (errno.EBUSY,)),
    (K("6.1.0-50-amd64", stable=(6, 1, 176)), LRU, False, era.Expect.MAY_DEADLOCK, ()),
    (K("7.3.0-1-amd64"), HASH, False, era.Expect.ERRNO, (errno.EDEADLK, errno.ETIMEDOUT)),
    (K("7.3.0-1-amd64"), LRU, True, era.Expect.ERRNO,
     (errno.EDEADLK, errno.ETIMEDOUT, errno.ENOMEM)),      # the LRU lock's AA: no node
    (K("6.15.0"), LRU, False, era.Expect.MAY_DEADLOCK, ()),   # LRU locks still raw
    (K("5.15.0"), HASH_NO, False, era.Expect.MAY_DEADLOCK, (errno.EBUSY,)),  # kmalloc in NMI
])
def test_nmi_predictions(kernel, spec, slot, expect, errnos):
    p = era.nmi_prediction(kernel, spec, slot)
    assert (p.expect, p.errnos) == (expect, errnos), p.why
    assert p.changes and all(c in {x.commit for x in commits.CHANGES} for c in p.changes)


def test_the_slot_prediction_follows_the_stable_backport():
    # Debian's 6.1.0-50 says nothing of its stable release in its name; its banner does
    banner = "6.1.0-50-amd64 (debian-kernel@lists.debian.org) #1 SMP Debian 6.1.176-1 (2026)"
    assert stable_version(banner, "6.1.0-50-amd64") == (6, 1, 176)
    proc_version = ("Linux version 6.1.0-50-amd64 (debian-kernel@lists.debian.org) (gcc-12 "
                    "(Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) "
                    "#1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)")
    assert stable_version(proc_version, "6.1.0-50-amd64") == (6, 1, 176)   # not gcc's
    ubuntu = "Linux version 5.15.0-91-generic ...\nUbuntu 5.15.0-91.101-generic 5.15.131"
    assert stable_version(ubuntu, "5.15.0-91-generic") == (5, 15, 131)
    assert stable_version("", "6.1.0-50-amd64") is None
    assert stable_version("", "6.12.58") == (6, 12, 58)
    unknown = era.nmi_prediction(K("6.1.0-50-amd64"), HASH, True)
    assert unknown.expect is era.Expect.DEADLOCK and "cannot be seen" in unknown.basis()
    old = era.nmi_prediction(K("6.1.0-1-amd64", stable=(6, 1, 4)), HASH, True)
    assert old.expect is era.Expect.DEADLOCK
    new = era.nmi_prediction(K("6.1.0-50-amd64", stable=(6, 1, 176)), HASH, True)
    assert "stable 6.1.176 >= 6.1.9, its backport" in new.basis()


def test_a_cpu_stuck_in_nmi_context_says_so():
    from pybpfmap.vm.watchdog import Evidence, VcpuEvidence

    v = VcpuEvidence(0, "queued_spin_lock_slowpath+0x4a", False, False, True,
                     stack=["htab_map_update_elem+0x12a", "bpf_trace_run2+0x40",
                            "nmi_handle+0x5d", "default_do_nmi+0x40", "exc_nmi+0x12f"])
    assert v.nmi_frame == "nmi_handle+0x5d"
    assert "in NMI context (nmi_handle on its stack)" in v.describe()
    assert "in NMI context (nmi_handle)" in Evidence(True, "hung", [v]).brief()
    task = VcpuEvidence(1, "queued_spin_lock_slowpath+0x4a", False, False, True,
                        stack=["htab_map_update_elem+0x12a", "__x64_sys_getppid+0x10"])
    assert task.nmi_frame is None and "NMI" not in task.describe()
