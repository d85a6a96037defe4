"""Every catalog kernel boots, is the era it claims, tells the truth about its
spin_unlock functions, and BCC compiles and loads a hash-map program on it.

One boot per kernel (tests/guest_check.py runs in it).  A kernel whose image
is not built skips with that reason (CI builds bookworm, bullseye and
trixie-backports; `pybpfmap vm build --kernel all` builds every one).
"""

from __future__ import annotations

import json

import pytest

from pybpfmap import era
from pybpfmap.vm import catalog
from tests.helpers import image

pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.slow]


@pytest.mark.parametrize("name", catalog.NAMES)
def test_kernel_boots_in_its_era_and_loads_a_hash_map_program(name, tmp_path):
    from pybpfmap.vm import run_in_vm

    entry, img = catalog.get(name), image(name)
    r = run_in_vm(["python3", "tests/guest_check.py"], kernel=name, results_dir=tmp_path,
                  timeout=900, build=False)
    assert r.outcome.finished and r.exit_code == 0, r.summary()
    assert r.kernel_release == img.release and entry.matches_release(r.kernel_release)
    got = json.loads(r.stdout())
    info = got["info"]
    assert info["kernel_release"] == r.kernel_release and info["where"] == f"vm:{name}"
    assert info["era"] == era.era_of(r.kernel_release).name
    assert info["preempt_rt"] is entry.preempt_rt
    assert info["kprobes"] is True
    # info lists exactly the unlock functions that are traceable here, and says why
    # each of the others is not
    assert sorted(info["unlock_symbols"]) == got["traceable_unlock"]
    assert set(info["unlock_symbols"]) | set(info["unlock_unavailable"]) == {
        "_raw_spin_unlock", "_raw_spin_unlock_irqrestore", "_raw_spin_unlock_irq",
        "_raw_spin_unlock_bh"}
    for func, why in info["unlock_unavailable"].items():
        assert ("inlined" in why) is (func not in got["kallsyms_unlock"]), (func, why)
    assert got["bcc"]["loaded"], got["bcc"]
    assert got["bcc"]["map_flags"] == 0


def test_bullseye_has_exactly_the_non_preempt_unlock_functions(tmp_path):
    """Debian's 5.10 is built without preemption: _raw_spin_unlock and
    _raw_spin_unlock_irq are inlined, only the irqrestore and bh variants exist."""
    from pybpfmap.vm import run_in_vm

    image("bullseye")
    r = run_in_vm(["python3", "-m", "pybpfmap", "info", "--json"], kernel="bullseye",
                  results_dir=tmp_path, timeout=600, build=False)
    info = json.loads(r.stdout())
    assert info["unlock_symbols"] == ["_raw_spin_unlock_irqrestore", "_raw_spin_unlock_bh"]
    assert all("inlined" in info["unlock_unavailable"][f]
               for f in ("_raw_spin_unlock", "_raw_spin_unlock_irq"))
    assert info["memlock"]["charged"] is True  # 5.10 charges maps to RLIMIT_MEMLOCK
