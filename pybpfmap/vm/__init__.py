"""The pybpfmap test VM: a Debian image built from packages, booted under qemu.

Public API (stable; the stress and bench commands use it)::

    from pybpfmap.vm import run_in_vm

    r = run_in_vm(["python3", "-m", "pybpfmap", "stress", "--json"],
                  kernel="bookworm", cpus=2, memory="2G",
                  timeout=1800, hang_timeout=60, results_dir=Path("results/x"))
    r.outcome        # "passed" "failed" "splat" "panic" "hung" "timeout" "lost"
    r.status         # exit status for a CLI (0, CMD's status, or 121..125)
    r.exit_code      # CMD's own status, None if it never finished
    r.splats         # [pybpfmap.vm.splats.Splat] found in the guest's dmesg
    r.dmesg_path     # <results_dir>/dmesg.txt (host path)
    r.accel          # "kvm", "tcg" (single-threaded) or "tcg-mttcg"
    r.kernel_release # guest `uname -r`
    r.evidence       # for hung/timeout: where each vCPU was; for panic: the panic

CMD runs as root in the guest, in the project tree (shared read-only over 9p
at the same path as on the host, importable via PYTHONPATH).  Anything CMD
writes into ``$PYBPFMAP_RESULTS`` lands in ``results_dir`` on the host; the
guest's dmesg lands there as ``dmesg.txt`` and, when CMD is pytest,
``junit.xml``.  Modules: :mod:`.image` (build/cache), :mod:`.guest` (guest
init), :mod:`.qemu` (process, QMP), :mod:`.watchdog` (hang evidence),
:mod:`.runner` (outcomes), :mod:`.accel`, :mod:`.splats`, :mod:`.box`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from pybpfmap.vm.image import SUITES, Image, build_image, ensure_image, find_image
from pybpfmap.vm.runner import REPO, VmError, VmResult
from pybpfmap.vm.splats import Splat, find_splats

DEFAULT_CMD = ["python3", "-m", "pytest"]

__all__ = ["run_in_vm", "VmResult", "VmError", "Image", "SUITES", "build_image",
           "ensure_image", "find_image", "find_splats", "Splat", "DEFAULT_CMD"]


def _log(msg: str) -> None:
    print(f"pybpfmap vm: {msg}", file=sys.stderr, flush=True)


def run_in_vm(cmd: list[str] | None = None, *, kernel: str = "bookworm", cpus: int = 2,
              memory: str = "2G", timeout: float = 1800, hang_timeout: float = 60,
              boot_timeout: float = 120, results_dir: Path | str | None = None,
              stream: bool | TextIO = True, accel: str | None = None,
              env: dict[str, str] | None = None, allow_splats: tuple[str, ...] = ()
              ) -> VmResult:
    """Run ``cmd`` (default: the test suite) as root in a fresh guest; see the module doc.

    Builds the image first if missing.  ``stream`` echoes the guest console to
    stdout (or to the given file).  ``accel`` None means: KVM if a probe boot
    showed it works here, else single-threaded TCG.  ``allow_splats`` are extra
    regexes of benign dmesg lines.  Never leaves a qemu process behind.
    """
    from pybpfmap.vm import guest
    from pybpfmap.vm.accel import choose_accel
    from pybpfmap.vm.runner import boot

    cmd = list(cmd or DEFAULT_CMD)
    image = ensure_image(kernel, _log)
    why = "requested"
    if accel is None:
        accel, why = choose_accel(image, _log)
    if results_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        results_dir = REPO / "results" / f"vm-{kernel}-{stamp}"
    results_dir = Path(results_dir).resolve()
    if guest.is_pytest(cmd) and not any(a.startswith("--junitxml") for a in cmd):
        cmd.append(f"--junitxml={guest.GUEST_RESULTS}/junit.xml")
    out = sys.stdout if stream is True else (stream or None)
    _log(f"booting {kernel} image (kernel {image.release}) with {accel} ({why}), "
         f"{cpus} vCPUs, {memory}; results in {results_dir}")
    return boot(image, cmd, accel=accel, cpus=cpus, memory=memory, timeout=timeout,
                hang_timeout=hang_timeout, boot_timeout=boot_timeout,
                results_dir=results_dir, env=env, allow=allow_splats, stream=out)
