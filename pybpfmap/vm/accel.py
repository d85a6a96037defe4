"""Choose the accelerator: KVM only if KVM really boots a stock kernel here.

``/dev/kvm`` existing is not enough: on some nested hypervisors (e.g. a PVM
host) a stock Debian kernel hangs at "Probing EDD".  So the first run boots
the image once under KVM with a short heartbeat deadline and caches the answer
(per host kernel, qemu version and image) in ``<cache>/accel.json``; every
later run reads it.  ``PYBPFMAP_VM_ACCEL=kvm|tcg|tcg-mttcg`` overrides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pybpfmap.guest import Accel
from pybpfmap.vm.image import Image, cache_root
from pybpfmap.vm.outcome import Outcome
from pybpfmap.vm.runner import boot

PROBE_BOOT_TIMEOUT = 25.0
OVERRIDE = "PYBPFMAP_VM_ACCEL"


def _probe_key(image: Image) -> str:
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                          text=True).stdout.splitlines()[:1]
    return f"{os.uname().release}|{qemu[0] if qemu else '?'}|{image.key}"


def kvm_usable() -> tuple[bool, str]:
    """Whether /dev/kvm can be opened at all (cheap, no boot)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"/dev/kvm: {e.strerror}"
    os.close(fd)
    return True, "/dev/kvm opens"


def choose_accel(image: Image, log=lambda m: print(f"pybpfmap vm: {m}", file=sys.stderr)
                 ) -> tuple[Accel, str]:
    """``(accel, why)``: KVM or TCG, probing KVM with one boot the first time;
    ``$PYBPFMAP_VM_ACCEL`` overrides (an unknown value is a usage error)."""
    forced = os.environ.get(OVERRIDE)
    if forced:
        return Accel.parse(forced), OVERRIDE
    ok, why = kvm_usable()
    if not ok:
        return Accel.TCG, why
    cache = cache_root() / "accel.json"
    key = _probe_key(image)
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        log(f"probing whether KVM boots the {image.name} kernel (once; "
            f"up to {PROBE_BOOT_TIMEOUT:.0f} s) ...")
        known[key] = _probe(image)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=2) + "\n")
    verdict = known[key]
    if verdict["kvm_boots"]:
        return Accel.KVM, f"KVM boot probe passed ({cache})"
    return Accel.TCG, (f"KVM cannot boot a stock kernel here: {verdict['detail']} "
                       f"(cached in {cache})")


def _probe(image: Image) -> dict:
    with tempfile.TemporaryDirectory(prefix="accel-probe-") as tmp:
        r = boot(image, ["true"], accel=Accel.KVM, cpus=1, memory="512M", timeout=60,
                 hang_timeout=PROBE_BOOT_TIMEOUT, boot_timeout=PROBE_BOOT_TIMEOUT,
                 results_dir=Path(tmp))
        tail = r.console_path.read_text(errors="replace").strip().splitlines()[-1:] \
            if r.console_path.exists() else []
    if r.outcome is Outcome.PASSED:
        return {"kvm_boots": True, "detail": f"booted in {r.boot_seconds} s"}
    last = f"; last console line: {tail[0]!r}" if tail else "; no console output"
    return {"kvm_boots": False, "detail": f"probe boot {r.outcome.label}{last}"}
