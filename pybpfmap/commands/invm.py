"""A command's ``--kernel`` run: its command line, as typed without the host's
options (``args.guest_argv``), relayed to each test-VM kernel
(:mod:`pybpfmap.vm.relay`); its records back, in the shape they have on the
host."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pybpfmap import era
from pybpfmap.splats import Allowed
from pybpfmap.vm.catalog import CatalogKernel
from pybpfmap.vm.image import release_of
from pybpfmap.vm.relay import ExpectedSplats, result_of, run_on_kernels


def no_splats(kernel: CatalogKernel) -> tuple[Allowed, ...]:
    return ()


def no_prealloc_tracing(kernel: CatalogKernel) -> tuple[Allowed, ...]:
    """For a command that loads tracing programs using BPF_F_NO_PREALLOC hash
    maps: the WARN ``kernel``'s era prints for them (5.7-6.0, once per boot)."""
    return tuple(era.no_prealloc_tracing_splats(release_of(kernel), kernel.preempt_rt))


def records(args: argparse.Namespace, load: Callable[[Any], list], *, timeout: float,
            expected_splats: ExpectedSplats = no_splats) -> list:
    """Every record the command printed in each of ``args.kernels``' test VMs
    (:class:`pybpfmap.vm.relay.VmRunFailed` for a guest that did not finish)."""
    runs = run_on_kernels(args.kernels, args.guest_argv, what=args.command,
                          results=args.results, timeout=timeout,
                          expected_splats=expected_splats)
    return [rec for run in runs for rec in load(result_of(run))]
