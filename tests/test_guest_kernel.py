"""The running kernel is the one it claims to be, tells the truth about its
spin_unlock functions, and BCC compiles and loads a hash-map program on it.

Marked ``guest``: ``pybpfmap vm test`` runs these inside each test VM (one
boot per kernel for the whole guest suite), where the kernel is also held to
its catalog entry; on a host they check the host.  The ground truth (BCC's
own kprobe attach and symbol lookup) goes through none of pybpfmap's code.
"""

from __future__ import annotations

import pytest

from pybpfmap import commits, era
from pybpfmap import kernel as kernel_probe
from pybpfmap.guest import guest_kernel
from pybpfmap.kfacts import Source
from pybpfmap.vm import catalog
from tests.helpers import kprobe_refusals

pytestmark = [pytest.mark.guest, pytest.mark.root]


@pytest.fixture(scope="module")
def info() -> kernel_probe.Kernel:
    return kernel_probe.prepared_probe()


def test_kernel_is_its_catalog_entry_and_era(info):
    assert info.era == era.era_of(info.kernel_facts()).name
    # the era facts the kernel can tell are probed: BTF's struct bpf_htab, or kallsyms
    assert info.kernel_facts().fact(commits.RQSPINLOCK).source is Source.PROBED
    name = guest_kernel()
    if name is None:
        pytest.skip("not in pybpfmap's test VM: no catalog entry to hold this kernel to")
    entry = catalog.get(name)
    assert entry.matches_release(info.kernel_release), (name, info.kernel_release)
    assert info.where == f"vm:{name}"
    assert info.preempt_rt is entry.preempt_rt
    assert info.kprobes is True  # every catalog kernel has them


@pytest.mark.kprobes
def test_unlock_functions_are_exactly_the_ones_bcc_can_probe(info):
    """info lists the unlock functions BCC can put a kprobe on, and for each
    one the kernel refused, why: "inlined" exactly when it has no symbol."""
    from bcc import BPF

    got = kprobe_refusals(kernel_probe.UNLOCK_FUNCTIONS)
    refused = {f for f, why in got.items() if why}
    assert set(info.unlock_symbols) == set(got) - refused, got
    assert set(info.unlock_unavailable) == refused, got
    for func, why in info.unlock_unavailable.items():
        assert ("inlined" in why) is (BPF.ksymname(func) == -1), (func, why)


@pytest.mark.kprobes
def test_bcc_loads_a_hash_map_program_with_the_flags_asked():
    from bcc import BPF

    from pybpfmap import bpfsys
    from pybpfmap.loader import bcc_program, load_func, map_fd
    from pybpfmap.stress.kinds import BY_NAME

    kind = BY_NAME["hash/prealloc"]
    with bcc_program("stress.c", maps={"MAP": kind.spec},
                     cflags=["-DNPROBES=1", "-DNERRNO=136"]) as bpf:
        fd = load_func(bpf, "on_probe0", BPF.KPROBE, "guest check")
        assert bpfsys.prog_info(fd)[0].type == BPF.KPROBE
        assert bpfsys.map_info(map_fd(bpf, "MAP")).map_flags == 0


def test_bullseye_has_exactly_the_non_preempt_unlock_functions(info):
    """Debian's 5.10 is built without preemption: _raw_spin_unlock and
    _raw_spin_unlock_irq are inlined, only the irqrestore and bh variants exist;
    and 5.10 charges maps to RLIMIT_MEMLOCK."""
    if guest_kernel() != "bullseye":
        pytest.skip(f"about Debian's 5.10 test VM (bullseye); this is "
                    f"{guest_kernel() or 'not a test VM'}")
    assert info.unlock_symbols == ["_raw_spin_unlock_irqrestore", "_raw_spin_unlock_bh"]
    assert all("inlined" in info.unlock_unavailable[f]
               for f in ("_raw_spin_unlock", "_raw_spin_unlock_irq"))
    assert info.memlock.charged is True
