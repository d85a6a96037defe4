"""The pybpfmap test VM: a Debian image built from packages, booted under qemu.

Two entry points:

* :func:`run_in_vm` runs any command as root in a fresh guest of a catalog
  kernel (:mod:`.catalog`) and says how the run ended (:class:`VmResult`,
  :class:`Outcome`): ``vm run`` and the test suite use it;
* :func:`pybpfmap.vm.relay.run_command` runs ``python3 -m pybpfmap ARGV``
  there and brings back the command's own JSON: every ``--kernel`` goes
  through it.

CMD runs in the project tree (shared read-only over 9p at the same path as on
the host, importable via PYTHONPATH).  Its standard output comes back on its
own virtio-serial port (``stdout.txt``); anything it writes into
``$PYBPFMAP_RESULTS`` lands in ``results_dir`` on the host, and so do the
guest's ``dmesg.txt``, ``console.log`` and, when CMD is pytest,
``junit.xml``.  Modules: :mod:`.catalog` (the kernels), :mod:`.image`
(build/cache), :mod:`.guest` (guest init), :mod:`.qemu` (process, QMP),
:mod:`.watchdog` (hang evidence), :mod:`.runner` (outcomes), :mod:`.relay`,
:mod:`.accel`, :mod:`.splats`, :mod:`.box`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pybpfmap.vm.image import Image, build_image, ensure_image, find_image
from pybpfmap.vm.qemu import Accel
from pybpfmap.vm.runner import (
    HANG_TIMEOUT,
    REPO,
    Outcome,
    Streams,
    VmError,
    VmResult,
    default_streams,
)

DEFAULT_CMD = ["python3", "-m", "pytest"]

__all__ = ["run_in_vm", "VmResult", "VmError", "Outcome", "Streams", "Image", "Accel",
           "build_image", "ensure_image", "find_image", "default_results_dir", "default_streams",
           "DEFAULT_CMD", "HANG_TIMEOUT"]


def _log(msg: str) -> None:
    print(f"pybpfmap vm: {msg}", file=sys.stderr, flush=True)


def default_results_dir(what: str, kernel: str) -> Path:
    """``results/<what>-<kernel>-<time>`` in the project tree."""
    return REPO / "results" / f"{what}-{kernel}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_in_vm(cmd: list[str] | None = None, *, kernel: str, cpus: int = 2,
              memory: str = "2G", timeout: float = 1800, hang_timeout: float = HANG_TIMEOUT,
              boot_timeout: float = 180, results_dir: Path | str | None = None,
              streams: Streams | None = None, accel: Accel | None = None,
              env: dict[str, str] | None = None, allow_splats: tuple[str, ...] = (),
              build: bool = True) -> VmResult:
    """Run ``cmd`` (default: the test suite) as root in a fresh guest of catalog
    kernel ``kernel``; see the module doc.

    Builds the image first if missing (``build=False``: a missing image is an
    error instead).  ``streams`` say where the live output goes (default:
    nowhere).  ``accel`` None means: KVM if a probe boot showed it works here,
    else single-threaded TCG.  ``allow_splats`` are extra regexes of benign
    dmesg lines.  Never leaves a qemu process behind.
    """
    from pybpfmap.errors import EnvironmentProblem
    from pybpfmap.vm import guest
    from pybpfmap.vm.accel import choose_accel
    from pybpfmap.vm.runner import boot

    cmd = list(cmd or DEFAULT_CMD)
    image = ensure_image(kernel, _log) if build else find_image(kernel)
    if image is None:
        raise EnvironmentProblem("--kernel", f"no {kernel} image built for the current "
                                 f"inputs: run `pybpfmap vm build --kernel {kernel}`")
    why = "requested"
    if accel is None:
        accel, why = choose_accel(image, _log)
    results_dir = Path(results_dir or default_results_dir("vm", kernel)).resolve()
    if guest.is_pytest(cmd) and not any(a.startswith("--junitxml") for a in cmd):
        cmd.append(f"--junitxml={guest.GUEST_RESULTS}/junit.xml")
    _log(f"booting {kernel} (kernel {image.release}) with {accel.value} ({why}), "
         f"{cpus} vCPUs, {memory}; results in {results_dir}")
    if accel.caveat:
        _log(f"WARNING: {accel.caveat}")
    return boot(image, cmd, accel=accel, cpus=cpus, memory=memory, timeout=timeout,
                hang_timeout=hang_timeout, boot_timeout=boot_timeout,
                results_dir=results_dir, env=env, allow=allow_splats, streams=streams)

