"""Boot the image, run one command in it, and tell the outcomes apart.

Outcomes and the CLI's exit status for each (``VmResult.status``):

=========  ===========  =====================================================
outcome    status       meaning
=========  ===========  =====================================================
passed     0            CMD exited 0 and dmesg has no unallowed splat
failed     CMD's status CMD exited non-zero (splats, if any, are reported too)
splat      121          CMD exited 0 but dmesg has a splat (WARN, BUG, lockdep...)
panic      122          the guest kernel panicked
hung       123          the heartbeat stopped for ``hang_timeout`` s (or none
                        arrived within ``boot_timeout`` s); vCPU evidence given
timeout    124          CMD still running after ``timeout`` s
lost       125          qemu exited without a status and without a panic
=========  ===========  =====================================================
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from pybpfmap.errors import PybpfmapError
from pybpfmap.vm import guest, splats
from pybpfmap.vm.image import Image, cache_root
from pybpfmap.vm.qemu import QemuConfig, qemu_process
from pybpfmap.vm.watchdog import collect_evidence

EXIT_SPLAT, EXIT_PANIC, EXIT_HUNG, EXIT_TIMEOUT, EXIT_LOST = 121, 122, 123, 124, 125
REPO = Path(__file__).resolve().parents[2]
# Guest dmesg lines excused in every VM run: pybpfmap's own negative-control
# test (`pybpfmap stress --inject splat`) writes this fake WARN on purpose.
RUN_ALLOW = (r"at pybpfmap-negative-control: injected by",)


class VmError(PybpfmapError):
    """The VM could not be started at all (exit status 125)."""

    def __init__(self, param: str, meaning: str):
        super().__init__(param, meaning, None, EXIT_LOST)


@dataclass
class VmResult:
    """What happened in one run; ``status`` is the exit status the CLI uses."""

    outcome: str
    status: int
    message: str
    exit_code: int | None
    accel: str
    kernel_release: str | None
    results_dir: Path
    dmesg_path: Path | None
    console_path: Path
    splats: list[splats.Splat] = field(default_factory=list)
    evidence: str = ""
    boot_seconds: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("results_dir", "dmesg_path", "console_path"):
            d[k] = str(d[k]) if d[k] is not None else None
        return d


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


def boot(image: Image, cmd: list[str], *, accel: str, cpus: int, memory: str,
         timeout: float, hang_timeout: float, boot_timeout: float, results_dir: Path,
         repo: Path = REPO, env: dict[str, str] | None = None, allow: tuple[str, ...] = (),
         stream: TextIO | None = sys.stdout) -> VmResult:
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
        if not (image.path / "kallsyms").is_file():
            env["PYBPFMAP_DUMP_KALLSYMS"] = "1"  # once per image; ~10 s under TCG
        (ctl / "env.sh").write_text(guest.env_sh(str(repo), env))
        (ctl / "cmd.sh").write_text(guest.cmd_sh(cmd))
        cfg = QemuConfig(kernel=image.kernel, initrd=image.initrd,
                         disk=_overlay(image.disk, run_dir), ctl_dir=ctl, repo=repo,
                         results=results_dir, run_dir=run_dir, accel=accel, cpus=cpus,
                         memory=memory)
        try:
            return _watch(cfg, image, timeout, hang_timeout, boot_timeout, allow, stream)
        finally:
            _cache_kallsyms(results_dir / ".kallsyms", image.path / "kallsyms")
            for name in ("console.log", "qemu.log", "ctl.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(run_dir / name, results_dir / name)


def _watch(cfg: QemuConfig, image: Image, timeout: float, hang_timeout: float,
           boot_timeout: float, allow: tuple[str, ...], stream: TextIO | None) -> VmResult:
    console, ctl = _Tail(cfg.console_log), _Tail(cfg.ctl_log)
    console_text, ctl_buf = [], ""
    release = exit_code = boot_s = None
    last_hb: float | None = None
    outcome, evidence = None, ""
    t0 = time.monotonic()
    with qemu_process(cfg) as proc:
        while True:
            text = console.read()
            if text:
                console_text.append(text)
                if stream:
                    stream.write(text)
                    stream.flush()
            ctl_buf += ctl.read()
            while "\n" in ctl_buf:
                line, ctl_buf = ctl_buf.split("\n", 1)
                word, _, arg = line.strip().partition(" ")
                if word == "hb":
                    last_hb = time.monotonic()
                elif word == "start":
                    release, boot_s = arg, time.monotonic() - t0
                    last_hb = time.monotonic()
                elif word == "exit":
                    exit_code = int(arg)
                    exited_at = time.monotonic()
            if proc.poll() is not None:
                break
            now = time.monotonic()
            if exit_code is not None:
                if now - exited_at > 15:  # CMD done, but poweroff got stuck: not CMD's fault
                    break
            elif now - t0 > timeout:
                outcome = "timeout"
                evidence = ("the guest's heartbeat was still arriving: CMD is slow or "
                            "waiting, the kernel is alive.\n")
            elif last_hb is None and now - t0 > boot_timeout:
                outcome = "hung"
                evidence = f"no heartbeat within {boot_timeout:.0f} s of boot.\n"
            elif last_hb is not None and now - last_hb > hang_timeout:
                outcome = "hung"
                evidence = f"no heartbeat for {now - last_hb:.0f} s: the guest is stuck.\n"
            if outcome:
                evidence += collect_evidence(cfg.qmp_sock, proc.pid,
                                             [image.path / "kallsyms", cfg.results / ".kallsyms",
                                              image.system_map])
                break
            time.sleep(0.2)
    seconds = time.monotonic() - t0
    text = console.read()
    console_text.append(text)
    if stream and text:
        stream.write(text)
        stream.flush()
    full_console = "".join(console_text)
    dmesg = cfg.results / "dmesg.txt"
    allow = (*RUN_ALLOW, *allow)
    found = splats.find_splats(dmesg.read_text(errors="replace"), allow) \
        if exit_code is not None and dmesg.is_file() else []
    panic = [s for s in splats.find_splats(full_console, allow) if s.kind == "panic"]
    if outcome is None and exit_code is None:
        if panic:
            outcome = "panic"
            evidence = splats.format_splats(splats.find_splats(full_console, allow),
                                            max_lines=40)
        else:
            outcome = "lost"
            tail = cfg.qemu_log.read_text(errors="replace")[-2000:] if cfg.qemu_log.exists() \
                else ""
            evidence = f"qemu exited with status {proc.returncode}; qemu said:\n{tail}"
    elif outcome is None:
        outcome = "passed" if exit_code == 0 and not found else \
            "splat" if exit_code == 0 else "failed"
    return _result(outcome, exit_code, cfg, release, found, evidence, boot_s, seconds,
                   dmesg if dmesg.is_file() else None)


def _result(outcome: str, exit_code: int | None, cfg: QemuConfig, release: str | None,
            found: list[splats.Splat], evidence: str, boot_s: float | None, seconds: float,
            dmesg: Path | None) -> VmResult:
    status = {"passed": 0, "failed": exit_code, "splat": EXIT_SPLAT, "panic": EXIT_PANIC,
              "hung": EXIT_HUNG, "timeout": EXIT_TIMEOUT, "lost": EXIT_LOST}[outcome]
    message = {
        "passed": "command passed",
        "failed": f"command failed with exit status {exit_code}",
        "splat": "command exited 0 but the guest kernel splatted",
        "panic": "guest kernel panicked",
        "hung": "guest hung",
        "timeout": f"command still running after {seconds:.0f} s: timed out",
        "lost": "qemu exited without the command's status (no panic seen)",
    }[outcome]
    if found and outcome != "splat":
        message += f" (and dmesg has {len(found)} splat(s))"
    result = VmResult(outcome, int(status or 0), message, exit_code, cfg.accel, release,
                      cfg.results, dmesg, cfg.results / "console.log", found, evidence,
                      None if boot_s is None else round(boot_s, 1), round(seconds, 1))
    with contextlib.suppress(OSError):
        (cfg.results / "result.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
