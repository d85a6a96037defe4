"""The machine a report's section ran on: what decides whether two runs' absolute
figures may be pooled.

Absolute timings (ns per triple, events/s, seconds) belong to the machine
that measured them: its CPU, how many cores, the host kernel, and for a test
VM how qemu ran the guest (TCG is emulation: ~40x slower than KVM, and its
speed is the host CPU's).  Two sections are runs of one machine only when all
four agree; :mod:`pybpfmap.report.pool` pools those and keeps every other
machine's figures apart.  A section from an older ``results.json`` has no
machine (``None``): it is an unknown machine of its own run, never pooled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pybpfmap.bench.machine import cpu_model
from pybpfmap.guest import Accel


@dataclass(frozen=True)
class Machine:
    """The host that ran a section, and how its guest ran."""

    cpu_model: str          # /proc/cpuinfo "model name" of the host ("" when it has none)
    cores: int              # online CPUs of the host
    host_kernel: str        # uname -r of the host
    accel: Accel | None     # test VM sections: how qemu ran the guest; None on the host
                            # itself (or when no record of the section said)

    @property
    def hardware(self) -> tuple[str, int, str]:
        """The host without the accelerator: one number per host in a report's labels."""
        return (self.cpu_model, self.cores, self.host_kernel)


def probe(accel: Accel | None = None) -> Machine:
    """This host, for sections whose guest ran under ``accel`` (None: on the host)."""
    return Machine(cpu_model(), os.sysconf("SC_NPROCESSORS_ONLN"), os.uname().release, accel)
