"""A command's ``--kernel`` run: its command line, as typed without the host's
options (``args.guest_argv``), relayed to each test-VM kernel
(:mod:`pybpfmap.vm.relay`); its records back, in the shape they have on the
host.  ``expected_splats``: :func:`pybpfmap.vm.relay.no_splats`, or
:func:`pybpfmap.vm.run.no_prealloc_tracing_splats` for a command whose tracing
programs use BPF_F_NO_PREALLOC maps."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pybpfmap.vm.relay import ExpectedSplats, no_splats, result_of, run_on_kernels


def records(args: argparse.Namespace, load: Callable[[Any], list], *, timeout: float,
            expected_splats: ExpectedSplats = no_splats) -> list:
    """Every record the command printed in each of ``args.kernels``' test VMs
    (:class:`pybpfmap.vm.relay.VmRunFailed` for a guest that did not finish)."""
    runs = run_on_kernels(args.kernels, args.guest_argv, what=args.command,
                          results=args.results, timeout=timeout,
                          expected_splats=expected_splats)
    return [rec for run in runs for rec in load(result_of(run))]
