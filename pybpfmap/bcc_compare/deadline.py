"""How long a tool may take to start here: scaled to this machine, not a constant.

A tool is ready when it prints its first line: every tool here prints its
header ("Tracing ...", or the column titles) after attaching.  How long that
may take depends on the machine, so the deadline is :data:`START_FACTOR` times
the time this machine takes to compile and load a trivial program with BCC
(:func:`compile_calibration`, measured once per process), at least
:data:`MIN_START` s.  A trivial compile pays the same Python start, bcc
import, clang start-up and BCC's own headers as a tool, and scales with the
machine the same way: measured here, the tools take 2 to 10 times as long as
the trivial program (host: runqlat 1.9 s against 0.25 s; bookworm VM under
TCG: tcpconnect 23 s against 2.5 s), so the factor leaves a margin of 6 for a
machine that is also busy with something else.  A tool that exits early fails
at once with its own error; one that hangs fails at the deadline.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time

from pybpfmap.bcc_compare.capture import error_summary
from pybpfmap.errors import EnvironmentProblem

START_FACTOR = 60.0
MIN_START = 30.0
CALIBRATION_LIMIT = 1800.0

TINY_PROGRAM = ("import bcc; b = bcc.BPF(text=b'int f(void *ctx) { return 0; }'); "
                "b.load_func(b'f', bcc.BPF.SOCKET_FILTER)")


@functools.cache
def compile_calibration() -> float:
    """Seconds this machine takes to start Python, import bcc, compile and load a
    trivial program (measured once per process)."""
    start = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-c", TINY_PROGRAM], capture_output=True,
                             text=True, timeout=CALIBRATION_LIMIT)
    except subprocess.TimeoutExpired as e:
        raise EnvironmentProblem("bcc", "compiling a trivial BPF program did not finish in "
                                 f"{CALIBRATION_LIMIT / 60:.0f} minutes") from e
    if out.returncode != 0:
        raise EnvironmentProblem("bcc", "cannot compile a trivial BPF program: "
                                 f"{error_summary(out.stderr)}")
    return time.monotonic() - start


def start_deadline() -> float:
    """Seconds a tool may take to print its first line on this machine."""
    return max(MIN_START, START_FACTOR * compile_calibration())
