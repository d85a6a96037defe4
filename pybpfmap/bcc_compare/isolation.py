"""The proof, on the kernel, that a parked tool's programs do not run.

Both modes of a tool stay loaded for the whole measurement, and only one may
be attached during a window (none during a baseline).  Before the windows,
with BPF run-time statistics on (``BPF_ENABLE_STATS``), a short workload with
every tool parked must run none of their programs, and with one resumed only
that one's (``run_cnt`` in ``bpf_prog_info``, :func:`.verify.prog_run_counts`).
"""

from __future__ import annotations

from contextlib import ExitStack

from pybpfmap import bpfsys
from pybpfmap.bcc_compare import verify
from pybpfmap.bcc_compare.failures import ToolFailed
from pybpfmap.bcc_compare.launcher import MODES
from pybpfmap.bcc_compare.process import ToolProcess
from pybpfmap.workloads.server import WorkloadServer

ISOLATION_WINDOW = 0.3   # seconds of workload per check step


def _ran(before: dict[int, int], after: dict[int, int]) -> int:
    return sum(after.get(i, 0) - n for i, n in before.items())


def check_isolation(procs: dict[str, ToolProcess], server: WorkloadServer,
                    timeout: float) -> str:
    """Prove on the kernel that parking works: with run-time statistics on, a
    short workload with every tool parked runs none of their programs, and with
    one resumed only that one's.  ToolFailed otherwise; the result as a sentence."""
    with ExitStack() as stack:
        try:
            stack.enter_context(bpfsys.stats_enabled())
        except OSError as e:
            return f"not checked: BPF_ENABLE_STATS refused ({e})"

        def counts() -> dict[str, dict[int, int]]:
            return {m: verify.prog_run_counts(p.proc.pid) for m, p in procs.items()}

        before = counts()
        server.window(ISOLATION_WINDOW)
        after = counts()
        ran = {m: _ran(before[m], after[m]) for m in procs}
        if any(ran.values()):
            name = procs[MODES[0]].tool.name
            raise ToolFailed(name, f"{name}: parked programs still ran ({ran}): detaching "
                             "does not work here")
        seen = {}
        for mode, p in procs.items():
            p.resume(timeout)
            try:
                before = counts()
                server.window(ISOLATION_WINDOW)
                after = counts()
            finally:
                p.park(timeout)
            ran = {m: _ran(before[m], after[m]) for m in procs}
            others = {m: n for m, n in ran.items() if m != mode and n}
            if others:
                raise ToolFailed(p.tool.name, f"{p.tool.name}: while only {mode} was "
                                 f"attached, the parked programs ran too ({others})")
            if not ran[mode]:
                raise ToolFailed(p.label, f"{p.label}: its programs never ran during its "
                                 f"workload ({server.name}): nothing to measure")
            seen[mode] = ran[mode]
    runs = ", ".join(f"{m} {n}" for m, n in seen.items())
    return (f"checked on the kernel (run_cnt): parked programs ran 0 times; each mode "
            f"alone ran its own ({runs} runs in {ISOLATION_WINDOW:g} s) and not the other's")


def other_programs(procs: dict[str, ToolProcess]) -> int:
    """How many BPF programs are loaded that are not these tools' (someone
    else's probes may be in the baseline)."""
    ours: set[int] = set()
    for p in procs.values():
        ours.update(verify.prog_ids(p.proc.pid))
    return len(bpfsys.all_ids(bpfsys.PROG_GET_NEXT_ID) - ours)
