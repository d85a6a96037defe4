"""Boot the image, run one command in it, and tell the outcomes apart: a
vCPU's heartbeat on the control port, the console, qemu's own end; the
outcome, its exit status and the evidence of a hang are
:mod:`pybpfmap.vm.outcome`'s records.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pybpfmap import guest, splats
from pybpfmap.guest import Accel
from pybpfmap.vm.image import Image, cache_root
from pybpfmap.vm.nmi import NmiInjector
from pybpfmap.vm.outcome import (
    Outcome,
    VmError,
    VmResult,
)
from pybpfmap.vm.peers import peers_dir
from pybpfmap.vm.qemu import QemuConfig, qemu_process
from pybpfmap.vm.watchdog import Evidence, collect_evidence, qmp_monitor

REPO = Path(__file__).resolve().parents[2]
HANG_TIMEOUT = 60.0     # seconds without a vCPU's heartbeat before the guest is hung
POWEROFF_GRACE = 15.0   # CMD done, but poweroff got stuck: not CMD's fault
# Console reports worth quoting as evidence of a hang.
LOCKUP_KINDS = ("soft_lockup", "hard_lockup", "rcu_stall", "hung_task")


class _Tail:
    """Reads what was appended to a file since the last call."""

    def __init__(self, path: Path):
        self.path, self.pos = path, 0

    def read(self) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return ""
        self.pos += len(data)
        return data.decode(errors="replace")


def _overlay(base: Path, run_dir: Path) -> Path:
    disk = run_dir / "overlay.qcow2"
    r = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        str(base), str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        raise VmError("qemu-img", f"cannot create overlay: {r.stderr.strip()}")
    return disk


def _cache_kallsyms(dumped: Path, cached: Path) -> None:
    """Keep the core kernel's symbols of the first boot next to the image."""
    try:
        text = dumped.read_text(errors="replace")
        dumped.unlink()
    except OSError:
        return
    core = "".join(line + "\n" for line in text.splitlines() if "[" not in line)
    if core and not cached.exists():
        tmp = cached.with_name(f".kallsyms.{os.getpid()}")
        tmp.write_text(core)
        tmp.rename(cached)


def _remove_orphans(runs: Path) -> None:
    """Delete run folders (overlays) left by a runner that was SIGKILLed."""
    for d in runs.glob("run-*"):
        try:
            pid = int((d / "owner.pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            continue


@dataclass
class Streams:
    """Where the live guest output goes: CMD's stdout, and the console
    (kernel messages and CMD's stderr); None drops it."""

    stdout: TextIO | None = None
    console: TextIO | None = None


def boot(image: Image, cmd: list[str], *, accel: Accel, cpus: int, memory: str,
         timeout: float, hang_timeout: float, boot_timeout: float, results_dir: Path,
         repo: Path = REPO, env: dict[str, str] | None = None, allow: tuple = (),
         streams: Streams | None = None) -> VmResult:
    """One boot of ``image`` running ``cmd``; see :func:`pybpfmap.vm.run_in_vm`."""
    if not shutil.which("qemu-system-x86_64"):
        raise VmError("qemu-system-x86_64", "not installed (vagrant/provision.sh --host)")
    results_dir.mkdir(parents=True, exist_ok=True)
    runs = cache_root() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    _remove_orphans(runs)
    with tempfile.TemporaryDirectory(prefix="run-", dir=runs) as tmp:
        run_dir = Path(tmp)
        (run_dir / "owner.pid").write_text(f"{os.getpid()}\n")
        ctl = run_dir / "ctl"
        ctl.mkdir()
        (ctl / "init.sh").write_text(guest.INIT)
        env = dict(env or {})
        if not image.kallsyms.is_file():
            env["PYBPFMAP_DUMP_KALLSYMS"] = "1"  # once per image; ~10 s under TCG
        (ctl / "env.sh").write_text(guest.env_sh(str(repo), image.name, accel.value, env))
        (ctl / "cmd.sh").write_text(guest.cmd_sh(cmd))
        peers = peers_dir()
        peers.mkdir(parents=True, exist_ok=True)
        cfg = QemuConfig(kernel=image.kernel, initrd=image.initrd,
                         disk=_overlay(image.disk, run_dir), ctl_dir=ctl, repo=repo,
                         results=results_dir, run_dir=run_dir, accel=accel, cpus=cpus,
                         memory=memory, peers=peers)
        try:
            return _Watch(cfg, image, timeout, hang_timeout, boot_timeout, allow,
                          streams or Streams()).run()
        finally:
            _cache_kallsyms(results_dir / ".kallsyms", image.kallsyms)
            for name in ("console.log", "qemu.log", "ctl.log", "stdout.txt"):
                with contextlib.suppress(OSError):
                    shutil.copy(run_dir / name, results_dir / name)


def heartbeat_silence(last_beat: dict[int, float], now: float,
                      hang_timeout: float) -> str | None:
    """Why the guest is hung, from each vCPU's last heartbeat (host monotonic
    seconds), or None while it is not, or not yet decided.

    A vCPU silent for more than *hang_timeout* s is stuck.  Another one *went
    on* only if it beat after the first stuck one's silence passed
    *hang_timeout*: the beats are a second apart but not in phase, so a vCPU
    whose last beat came a moment after the stuck one's may have stopped with
    it.  Until each vCPU has either beaten since then or gone silent too, the
    verdict waits (at most *hang_timeout* s; a live vCPU answers within its
    beat period)."""
    late = {cpu: now - t for cpu, t in last_beat.items() if now - t > hang_timeout}
    if not late:
        return None
    hung_since = min(last_beat[cpu] for cpu in late) + hang_timeout
    went_on = sorted(cpu for cpu, t in last_beat.items() if t > hung_since and cpu not in late)
    if len(late) + len(went_on) < len(last_beat):
        return None
    if went_on:
        return (f"{', '.join(f'CPU#{c}' for c in sorted(late))} stuck: no heartbeat from "
                f"{'it' if len(late) == 1 else 'them'} for {max(late.values()):.0f} s while "
                f"{', '.join(f'CPU#{c}' for c in went_on)} went on")
    why = f"no heartbeat from any vCPU for {min(late.values()):.0f} s"
    if max(late.values()) - min(late.values()) > 2 * guest.BEAT_PERIOD_S:  # one stopped first
        why += (" (" + ", ".join(f"CPU#{c} silent for {late[c]:.0f} s"
                                 for c in sorted(late, key=late.get, reverse=True))
                + ": not at once)")
    return why


class _Watch:
    """The loop that follows one run: streams output, reads the control port,
    and decides when the guest is hung or the run has timed out."""

    def __init__(self, cfg: QemuConfig, image: Image, timeout: float, hang_timeout: float,
                 boot_timeout: float, allow: tuple, streams: Streams):
        self.cfg, self.image, self.streams = cfg, image, streams
        self.timeout, self.hang_timeout, self.boot_timeout = timeout, hang_timeout, boot_timeout
        self.allow = (splats.NEGATIVE_CONTROL, *allow)
        self.console, self.out, self.ctl = (_Tail(cfg.console_log), _Tail(cfg.stdout_log),
                                            _Tail(cfg.ctl_log))
        self.console_text: list[str] = []
        self.echo_buf = ""
        self.ctl_buf = ""
        self.release: str | None = None
        self.exit_code: int | None = None
        self.boot_s: float | None = None
        self.started_up: float | None = None
        self.exited_at: float | None = None
        self.hb_host: dict[int, float] = {}   # cpu -> host monotonic time of its last beat
        self.hb_guest: dict[int, float] = {}  # cpu -> guest uptime of its last beat
        self.nmi = NmiInjector(cfg.nmi_sock)   # idle until CMD asks (``nmi <rate>``)
        self.t0 = time.monotonic()

    def _pump(self) -> None:
        text = self.console.read()
        if text:
            self.console_text.append(text)
            self._echo(text)
        _write(self.streams.stdout, self.out.read())
        self.ctl_buf += self.ctl.read()
        while "\n" in self.ctl_buf:
            line, self.ctl_buf = self.ctl_buf.split("\n", 1)
            self._control(line, time.monotonic())

    def _control(self, line: str, now: float) -> None:
        """One line of the control port.  CMD shares the port (its marks), so a
        line this loop does not understand is left to others, never fatal."""
        match guest.parse_ctl(line):
            case guest.Beat(cpu, up):
                self.hb_host[cpu], self.hb_guest[cpu] = now, up
            case guest.Start(release):
                self.release, self.boot_s = release, now - self.t0
                self.started_up = max(self.hb_guest.values(), default=None)
                for cpu in range(self.cfg.cpus):  # the clock starts for every CPU
                    self.hb_host.setdefault(cpu, now)
            case guest.Exit(status):
                self.exit_code, self.exited_at = status, now
            case guest.Nmi(rate):
                self.nmi.set_rate(rate)

    def _echo(self, text: str) -> None:
        """The console, live, line by line, without the boot log: kernel lines
        stamped before CMD started (a PREEMPT_RT kernel's printk thread prints
        the whole boot log late, whatever the loglevel) stay in console.log."""
        if self.streams.console is None:
            return
        self.echo_buf += text
        *lines, self.echo_buf = self.echo_buf.split("\n")
        for line in lines:
            m = _KERNEL_STAMP.match(line)
            if m and self.started_up is not None and float(m.group(1)) < self.started_up:
                continue
            _write(self.streams.console, line + "\n")

    def _stalled(self, now: float) -> tuple[Outcome, str] | None:
        """Whether to stop now, and why."""
        if self.exit_code is not None:
            return None
        if now - self.t0 > self.timeout:
            return Outcome.TIMEOUT, ("the run's time limit passed while the guest's "
                                     "heartbeats still arrived: CMD is slow or waiting")
        if self.release is None:
            if now - self.t0 > self.boot_timeout:
                return Outcome.HUNG, f"CMD did not start within {self.boot_timeout:.0f} s of boot"
            return None
        silence = heartbeat_silence(self.hb_host, now, self.hang_timeout)
        return (Outcome.HUNG, silence) if silence else None

    def run(self) -> VmResult:
        outcome: Outcome | None = None
        note = ""
        evidence: Evidence | None = None
        with qemu_process(self.cfg) as proc, contextlib.closing(self.nmi):
            while True:
                self._pump()
                if proc.poll() is not None:
                    break
                now = time.monotonic()
                if self.exited_at is not None and now - self.exited_at > POWEROFF_GRACE:
                    break
                stop = self._stalled(now)
                if stop:
                    outcome, note = stop
                    self.nmi.set_rate(0)   # the evidence is of the hang, not of new NMIs
                    ages = {cpu: now - t for cpu, t in self.hb_host.items()}
                    evidence = collect_evidence(
                        qmp_monitor(self.cfg.qmp_sock), proc.pid,
                        [self.image.kallsyms, self.cfg.results / ".kallsyms",
                         self.image.system_map], ages, note=note)
                    break
                time.sleep(0.2)
            seconds = time.monotonic() - self.t0
        self._pump()
        if self.echo_buf:  # a last line without its newline
            self._echo("\n")
        return self._result(outcome, note, evidence, proc.returncode, seconds)

    def _result(self, outcome: Outcome | None, note: str, evidence: Evidence | None,
                qemu_status: int | None, seconds: float) -> VmResult:
        full_console = "".join(self.console_text)
        dmesg = self.cfg.results / "dmesg.txt"
        found = splats.find_splats(dmesg.read_text(errors="replace"), self.allow) \
            if self.exit_code is not None and dmesg.is_file() else []
        on_console = splats.find_splats(full_console, self.allow)
        if evidence is not None:
            evidence.console = [s.text for s in on_console if s.kind in LOCKUP_KINDS]
        message = note
        if outcome is None and self.exit_code is None:
            panic = [s for s in on_console if s.kind == "panic"]
            if panic:
                outcome = Outcome.PANIC
                message = "guest kernel panicked: " + panic[0].line.strip()
                found = on_console
            else:
                outcome = Outcome.LOST
                tail = self.cfg.qemu_log.read_text(errors="replace")[-2000:] \
                    if self.cfg.qemu_log.exists() else ""
                message = (f"qemu exited with status {qemu_status} without the command's "
                           f"status (no panic seen); qemu said: {tail.strip()[-300:]}")
        elif outcome is None:
            outcome = (Outcome.PASSED if self.exit_code == 0 and not found else
                       Outcome.SPLAT if self.exit_code == 0 else Outcome.FAILED)
            message = {Outcome.PASSED: "command passed",
                       Outcome.SPLAT: "command exited 0 but the guest kernel splatted",
                       Outcome.FAILED: f"command failed with exit status {self.exit_code}",
                       }[outcome]
        else:
            message = f"guest {outcome.label}: {note}"
        if found and outcome is not Outcome.SPLAT:
            message += f" (and the kernel log has {len(found)} splat(s))"
        result = VmResult(outcome, message, self.exit_code, self.cfg.accel, self.image.name,
                          self.release, self.cfg.results, found, evidence,
                          None if self.boot_s is None else round(self.boot_s, 1),
                          round(seconds, 1), self.started_up, dict(self.hb_guest),
                          self.nmi.sent, self.nmi.problem)
        with contextlib.suppress(OSError):
            (self.cfg.results / "result.json").write_text(
                json.dumps(result.to_json(), indent=2) + "\n")
        return result


_KERNEL_STAMP = re.compile(r"\[\s*(\d+\.\d+)\] ")


def _write(stream: TextIO | None, text: str) -> None:
    if stream is not None and text:
        stream.write(text)
        stream.flush()


def default_streams(quiet: bool = False) -> Streams:
    """CMD's stdout to ours, the console to our stderr (nothing of it when quiet)."""
    return Streams(sys.stdout, None if quiet else sys.stderr)
