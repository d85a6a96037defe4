"""One run in the test VM: the image (built if missing), the accelerator, the
results folder, then one boot (:func:`pybpfmap.vm.runner.boot`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pybpfmap import era, guest
from pybpfmap.errors import EnvironmentProblem
from pybpfmap.guest import Accel
from pybpfmap.kfacts import KernelFacts
from pybpfmap.splats import Allowed
from pybpfmap.vm.accel import choose_accel
from pybpfmap.vm.build import ensure_image
from pybpfmap.vm.catalog import CatalogKernel
from pybpfmap.vm.image import find_image, release_of
from pybpfmap.vm.outcome import VmResult
from pybpfmap.vm.runner import HANG_TIMEOUT, REPO, Streams, boot

DEFAULT_CMD = ["python3", "-m", "pytest"]


def _log(msg: str) -> None:
    print(f"pybpfmap vm: {msg}", file=sys.stderr, flush=True)


def results_folder(results: str | Path | None, what: str, kernel: CatalogKernel,
                   many: bool = False) -> Path:
    """Where one kernel's run of command ``what`` puts its files: ``results``
    as given (``results/<kernel>`` when the command runs several kernels), or
    by default ``results/<what>-<kernel>-<time>`` in the project tree."""
    if results is None:
        return REPO / "results" / f"{what}-{kernel.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(results) / kernel.name if many else Path(results)


def no_prealloc_tracing_splats(kernel: CatalogKernel) -> tuple[Allowed, ...]:
    """For a run that loads tracing programs using BPF_F_NO_PREALLOC hash maps:
    the WARN ``kernel``'s era prints for the first of them (5.7-6.0, not on
    PREEMPT_RT, once per boot)."""
    facts = KernelFacts.assumed_from(release_of(kernel), kernel.preempt_rt)  # not booted yet
    return tuple(era.no_prealloc_tracing_splats(facts))


def run_in_vm(cmd: list[str] | None = None, *, kernel: CatalogKernel, cpus: int = 2,
              memory: str = "2G", timeout: float = 1800, hang_timeout: float = HANG_TIMEOUT,
              boot_timeout: float = 180, results_dir: Path | str | None = None,
              streams: Streams | None = None, accel: Accel | None = None,
              env: dict[str, str] | None = None, allow_splats: tuple = (),
              build: bool = True) -> VmResult:
    """Run ``cmd`` (default: the test suite) as root in a fresh guest of
    ``kernel``; see :mod:`pybpfmap.vm`.

    Builds the image first if missing (``build=False``: a missing image is an
    error instead).  ``streams`` say where the live output goes (default:
    nowhere).  ``accel`` None means: KVM if a probe boot showed it works here,
    else single-threaded TCG.  ``allow_splats`` are extra benign dmesg lines
    (regexes or :class:`pybpfmap.splats.Allowed`).  Never leaves a qemu process
    behind.
    """
    cmd = list(cmd or DEFAULT_CMD)
    image = ensure_image(kernel, _log) if build else find_image(kernel)
    if image is None:
        raise EnvironmentProblem("--kernel", f"no {kernel.name} image built for the current "
                                 f"inputs: run `pybpfmap vm build --kernel {kernel.name}`")
    why = "requested"
    if accel is None:
        accel, why = choose_accel(image, _log)
    results_dir = Path(results_dir or results_folder(None, "vm", kernel)).resolve()
    if guest.is_pytest(cmd) and not any(a.startswith("--junitxml") for a in cmd):
        cmd.append(f"--junitxml={guest.GUEST_RESULTS}/junit.xml")
    _log(f"booting {kernel.name} (kernel {image.release}) with {accel.value} ({why}), "
         f"{cpus} vCPUs, {memory}; results in {results_dir}")
    if accel.caveat:
        _log(f"WARNING: {accel.caveat}")
    return boot(image, cmd, accel=accel, cpus=cpus, memory=memory, timeout=timeout,
                hang_timeout=hang_timeout, boot_timeout=boot_timeout,
                results_dir=results_dir, env=env, allow=allow_splats, streams=streams)
