"""How one test-VM run ended: the outcome, its exit status, the run's record.

Outcomes and the CLI's exit status for each (:class:`Outcome`):

=========  ===========  =====================================================
outcome    status       meaning
=========  ===========  =====================================================
passed     0            CMD exited 0 and dmesg has no unallowed splat
failed     CMD's status CMD exited non-zero (splats, if any, are reported too)
splat      121          CMD exited 0 but dmesg has a splat (WARN, BUG, lockdep...)
panic      122          the guest kernel panicked
hung       123          a vCPU's heartbeat stopped for ``hang_timeout`` s while
                        the others went on (one CPU locked up), or every one did,
                        or none arrived within ``boot_timeout`` s; vCPU evidence
timeout    124          CMD still running after ``timeout`` s
lost       125          qemu exited without a status and without a panic
=========  ===========  =====================================================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from pybpfmap.errors import PybpfmapError
from pybpfmap.guest import Accel
from pybpfmap.records import to_json
from pybpfmap.splats import Splat
from pybpfmap.vm.watchdog import Evidence


class Outcome(enum.Enum):
    """How one VM run ended; ``status`` is the exit status the CLI uses."""

    PASSED = ("passed", 0, True)
    FAILED = ("failed", None, True)     # CMD's own non-zero status
    SPLAT = ("splat", 121, True)
    PANIC = ("panic", 122, False)
    HUNG = ("hung", 123, False)
    TIMEOUT = ("timeout", 124, False)
    LOST = ("lost", 125, False)

    def __init__(self, label: str, status: int | None, finished: bool):
        self.label = label
        self.fixed_status = status
        self.finished = finished  # CMD ran to its end (its output is complete)

    @classmethod
    def from_label(cls, label: str) -> Outcome:
        return next(o for o in cls if o.label == label)


EXIT_SPLAT, EXIT_PANIC, EXIT_HUNG, EXIT_TIMEOUT, EXIT_LOST = (
    Outcome.SPLAT.fixed_status, Outcome.PANIC.fixed_status, Outcome.HUNG.fixed_status,
    Outcome.TIMEOUT.fixed_status, Outcome.LOST.fixed_status)


class VmError(PybpfmapError):
    """The VM could not be started at all (exit status 125)."""

    def __init__(self, param: str, meaning: str):
        super().__init__(param, meaning, None, EXIT_LOST)


@dataclass
class VmResult:
    """What happened in one run."""

    outcome: Outcome
    message: str
    exit_code: int | None
    accel: Accel
    kernel: str                  # the catalog kernel booted
    kernel_release: str | None   # the guest's uname -r
    results_dir: Path
    splats: list[Splat] = field(default_factory=list)
    evidence: Evidence | None = None
    boot_seconds: float | None = None
    seconds: float = 0.0
    started_at: float | None = None   # guest uptime when CMD started
    last_heartbeat: dict[int, float] = field(default_factory=dict)  # cpu -> guest uptime
    nmis_injected: int = 0            # NMIs the host sent on CMD's request (QMP)
    nmi_problem: str | None = None    # why the NMI injection stopped early

    @property
    def status(self) -> int:
        if self.outcome is Outcome.FAILED:
            return self.exit_code or 1
        return self.outcome.fixed_status or 0

    @property
    def dmesg_path(self) -> Path | None:
        path = self.results_dir / "dmesg.txt"
        return path if path.is_file() else None

    @property
    def console_path(self) -> Path:
        return self.results_dir / "console.log"

    @property
    def ctl_path(self) -> Path:
        """The control port's log: heartbeats, start, CMD's marks, exit."""
        return self.results_dir / "ctl.log"

    @property
    def stdout_path(self) -> Path:
        """CMD's standard output, as the guest wrote it to its own port."""
        return self.results_dir / "stdout.txt"

    def stdout(self) -> str:
        try:
            return self.stdout_path.read_text(errors="replace")
        except OSError:
            return ""

    def evidence_text(self) -> str:
        return self.evidence.text() if self.evidence else ""

    def summary(self) -> str:
        """One line: outcome, message, kernel, accelerator, times, exit status."""
        return (f"{self.outcome.label}: {self.message} [{self.kernel} kernel "
                f"{self.kernel_release}, accel {self.accel.value}, boot-to-CMD "
                f"{self.boot_seconds} s, total {self.seconds} s, exit status {self.status}]")

    def to_json(self) -> dict:
        d = to_json(self)
        d["outcome"] = self.outcome.label
        d["status"] = self.status
        d["evidence_text"] = self.evidence_text()
        return d
