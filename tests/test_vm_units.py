"""Host-only unit tests of the VM runner's pieces (no qemu, no root)."""

from __future__ import annotations

import os
import shlex
import subprocess
from types import SimpleNamespace

import pytest

from pybpfmap import guest
from pybpfmap.cli import build_parser
from pybpfmap.commands.args import command_parser, guest_argv
from pybpfmap.errors import UsageError
from pybpfmap.guest import Accel
from pybpfmap.vm import catalog
from pybpfmap.vm.qemu import QemuConfig, kernel_cmdline, qemu_argv
from pybpfmap.vm.watchdog import (
    SymbolMap,
    VcpuEvidence,
    diagnose,
    lock_name,
    parse_registers,
    stack_words,
)

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff810f2010 T native_queued_spin_lock_slowpath
ffffffff81a3c2d0 T default_idle
ffffffff81a3c300 t default_idle_call
ffffffff812b4a10 T htab_map_update_elem
ffffffff81a4f600 T _raw_spin_lock_irqsave
ffffffff81a4f620 T _raw_spin_unlock_irqrestore
ffffffff81e00000 T _etext
ffffffff82000000 D some_data
ffffffff83b9d628 b pcpu_lock
ffffffffc0200000 t bpf_prog_x [bpf]
"""

REGISTERS = """\
CPU#0
RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000001 RDX=0000000000000000
RSI=0000000000000083 RDI=0000000000004e34 RBP=ffffffff82a0a8c0 RSP=ffffffff82a03e98
RIP=ffffffff81a3c2de RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
CPU#1
RAX=0000000000000001 RBX=ffff888004b2c000
RSI=0000000000000001 RDI=ffffffff83b9d628 RBP=ffffc90000103d20 RSP=ffffc90000103cf8
RIP=ffffffff810f2034 RFL=00000086 [--S--P-] CPL=0 II=0 A20=1 SMM=0 HLT=0
"""

# HMP `x/4gx` output: a return address into _raw_spin_lock_irqsave, a word
# pointing exactly at a function (a pointer, not a return address), a heap
# word, a trampoline address past _etext, a return address into the update.
STACK = """\
ffffc90000103cf8: 0xffffffff81a4f610 0xffffffff81a4f620
ffffc90000103d08: 0xffff888004b2c000 0xffffffff81f00010
ffffc90000103d18: 0xffffffff812b4a91 0xffffffff812b4a91
"""


def test_symbolize_kallsyms_and_data_is_skipped():
    syms = SymbolMap(KALLSYMS)
    assert syms.symbolize(0xffffffff81a3c2de) == "default_idle+0xe"
    assert syms.symbolize(0xffffffff812b4a10) == "htab_map_update_elem+0x0"
    assert syms.symbolize(0x4f399d2).startswith("? (user space")
    assert syms.symbolize(0xffffffffc0100000).startswith("? (module")
    assert syms.symbolize(0xffffffff81f00010).startswith("? (module, trampoline")
    assert syms.symbolize(0xffffffffc0200004) == "bpf_prog_x+0x4"


def test_parse_info_registers_irq_flag_and_lock_argument():
    cpus = parse_registers(REGISTERS, SymbolMap(KALLSYMS))
    assert [(c.cpu, c.symbol, c.halted, c.irqs_enabled) for c in cpus] == [
        (0, "default_idle+0xe", True, True),
        (1, "native_queued_spin_lock_slowpath+0x24", False, False)]
    assert cpus[1].rdi == 0xffffffff83b9d628 and cpus[1].rsp == 0xffffc90000103cf8
    assert "IRQS OFF" in str(cpus[1])


def test_stack_words_keep_return_addresses_only():
    assert stack_words(STACK, SymbolMap(KALLSYMS)) == [
        "_raw_spin_lock_irqsave+0x10", "htab_map_update_elem+0x81"]


def test_lock_name_from_data_symbols():
    data = SymbolMap(KALLSYMS, kinds=SymbolMap.DATA)
    assert lock_name(0xffffffff83b9d628, data).startswith("pcpu_lock (")
    assert "not a static kernel symbol" in lock_name(0xffff888006f03358, data)
    assert lock_name(0x4e34, data) is None


def test_diagnose_stuck_cpu_vs_idle():
    stuck = VcpuEvidence(0, "native_queued_spin_lock_slowpath+0x24", False, False, True,
                         "pcpu_lock (0xffffffff83b9d628)")
    idle = VcpuEvidence(1, "default_idle+0xe", True, True, False)
    line = diagnose([stuck, idle])
    assert "CPU#0 in native_queued_spin_lock_slowpath with interrupts off spinning on " \
           "pcpu_lock" in line and "CPU#1 idle" in line
    assert "every vCPU is idle" in diagnose([idle])
    waiting = VcpuEvidence(1, "smp_call_function_single+0xe7", False, False, True)
    assert "CPU#1 in smp_call_function_single with interrupts off (waiting for another " \
           "CPU to run its cross-CPU call)" in diagnose([stuck, waiting])
    assert "cross-CPU" not in diagnose([stuck, idle])


def test_cmd_sh_quotes_exactly():
    cmd = ["sh", "-c", "echo 'a b' \"$X\"; exit 7"]
    script = guest.cmd_sh(cmd)
    assert shlex.split(script) == ["exec", *cmd]


def test_is_pytest():
    assert guest.is_pytest(["python3", "-m", "pytest", "-x"])
    assert guest.is_pytest(["/usr/bin/pytest-3"])
    assert not guest.is_pytest(["python3", "-m", "pybpfmap", "stress"])
    assert not guest.is_pytest(["uname", "-r"])


def test_env_sh_exports_results_kernel_and_accel():
    env = guest.env_sh("/work/main", "bullseye", "tcg", {"EXTRA": "x y"})
    assert "export PYBPFMAP_RESULTS=/run/pybpfmap/results" in env
    assert f"export {guest.ENV_KERNEL}=bullseye" in env
    assert f"export {guest.ENV_ACCEL}=tcg" in env
    assert "export EXTRA='x y'" in env


def test_marks_go_to_the_control_port_and_a_copy_to_the_console(monkeypatch, capsys):
    """The host reads marks from ctl.log (the port's write is out before the
    guest can hang); the console line is for the human watching."""
    r, w = os.pipe()
    monkeypatch.setenv(guest.ENV_KERNEL, "bookworm")
    monkeypatch.setenv(guest.ENV_CTL_FD, str(w))
    guest.mark("armed", "allocator", "hash/prealloc", "_raw_spin_unlock")
    os.close(w)
    with os.fdopen(r) as f:
        ctl = "hb 0 12.00\n\n" + f.read() + "hb 1 12.50\nexit 0\n"
    ((event, args, up),) = [(m.event, list(m.args), m.uptime) for m in guest.marks(ctl)]
    assert (event, args) == ("armed", ["allocator", "hash/prealloc", "_raw_spin_unlock"])
    assert up > 0
    assert capsys.readouterr().err == (f"{guest.MARK} armed allocator hash/prealloc "
                                       f"_raw_spin_unlock uptime={up:.2f}\n")
    assert guest.marks("pybpfmap-mark: armed a b uptime=1.0\n") == []  # the console copy
    assert [guest.parse_ctl(x) for x in ctl.splitlines() if x.startswith(("hb", "exit"))] == [
        guest.Beat(0, 12.0), guest.Beat(1, 12.5), guest.Exit(0)]
    assert guest.parse_ctl("exit zero") is None and guest.parse_ctl("hb 0") is None
    guest.mark("row-end", "x")  # the port closed by a parent: the console still has it
    assert "row-end x" in capsys.readouterr().err


def test_init_beats_every_beat_period(tmp_path) -> None:
    """INIT's heartbeat loop, run for three beats with a ``sleep`` that only
    notes what it was asked: it waits BEAT_PERIOD_S between beats (what the
    runner's hang verdict assumes), and each line it prints is a heartbeat
    the runner's watch loop takes."""
    from pybpfmap.vm.runner import _Watch

    (assign,) = [line for line in guest.INIT.splitlines() if line.startswith("beat=")]
    (loop,) = shlex.split(assign.removeprefix("beat="))
    asked = tmp_path / "asked"
    sleep = tmp_path / "sleep"
    sleep.write_text(f'#!/bin/sh\necho "$1" >>{asked}\n'
                     f'[ "$(wc -l <{asked})" -lt 3 ] || kill "$PPID"\n')
    sleep.chmod(0o755)
    path = f"{tmp_path}:{os.environ['PATH']}"
    beats = subprocess.run(["sh", "-c", loop, "hb", "1"], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "PATH": path})
    assert asked.read_text().split() == [str(guest.BEAT_PERIOD_S)] * 3, beats.stderr
    lines = beats.stdout.splitlines()
    assert len(lines) == 3, beats
    w = SimpleNamespace(hb_host={}, hb_guest={}, cfg=SimpleNamespace(cpus=2), t0=0.0)
    for line in lines:
        _Watch._control(w, line, 5.0)
    assert w.hb_host == {1: 5.0} and w.hb_guest == {1: float(lines[-1].split()[2])}


def test_init_keeps_the_control_port_open_for_cmd():
    assert f'exec {guest.CTL_FD}>"$ctl"' in guest.INIT
    (run,) = [line for line in guest.INIT.splitlines() if "cmd.sh" in line]
    assert f"{guest.CTL_FD}>&-" not in run
    assert f"export {guest.ENV_CTL_FD}={guest.CTL_FD}" in guest.env_sh("/r", "bullseye", "tcg", {})


def test_qemu_argv_is_read_only_base_two_ports_and_no_reboot(tmp_path):
    c = QemuConfig(kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd.img",
                   disk=tmp_path / "overlay.qcow2", ctl_dir=tmp_path, repo=tmp_path,
                   results=tmp_path / "r", run_dir=tmp_path)
    argv = qemu_argv(c)
    assert "-no-reboot" in argv
    assert argv[argv.index("-accel") + 1] == "tcg,thread=single"
    assert any("overlay.qcow2" in a for a in argv)
    assert any(guest.CTL_PORT in a for a in argv) and any(guest.OUT_PORT in a for a in argv)
    assert "panic=-1" in kernel_cmdline() and "nokaslr" in kernel_cmdline()


def test_accel_override_is_validated():
    assert Accel.parse("tcg") is Accel.TCG and Accel.KVM.emulated is False
    with pytest.raises(UsageError, match="PYBPFMAP_VM_ACCEL: unknown accelerator 'fast'"):
        Accel.parse("fast")


def test_catalog_names_all_and_eras():
    assert catalog.DEFAULT in catalog.NAMES and catalog.ALL not in catalog.NAMES
    assert [k.name for k in catalog.resolve(["all"])] == list(catalog.NAMES)
    assert [k.name for k in catalog.resolve(["trixie", "bullseye", "trixie"])] == [
        "trixie", "bullseye"]
    with pytest.raises(UsageError, match="--kernel: unknown test-VM kernel 'sid'"):
        catalog.resolve(["sid"])
    bullseye, rt = catalog.get("bullseye"), catalog.get("bullseye-rt")
    assert bullseye.matches_release("5.10.0-46-amd64")
    assert not bullseye.matches_release("5.10.0-43-rt-amd64")
    assert rt.matches_release("5.10.0-43-rt-amd64") and rt.preempt_rt
    assert catalog.get("trixie-backports").headers_for("linux-image-7.3.4+deb13-amd64") == \
        "linux-headers-7.3.4+deb13-amd64"


def _guest_argv(*argv: str) -> list[str]:
    """What ``pybpfmap ARGV`` relays to the test VM, as the CLI computes it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return guest_argv(command_parser(parser, args), list(argv))


def test_guest_argv_drops_the_host_only_options_by_the_parsers_arities():
    assert _guest_argv("bench", "--kernel", "bullseye", "bookworm", "--types",
                       "hash,percpu_hash", "--results=/tmp/x", "--seconds", "5", "--plot",
                       "p.png", "--json") == [
        "bench", "--types", "hash,percpu_hash", "--seconds", "5", "--json"]
    # stress decides --scenario, --types and --isolate per boot: none is relayed as typed
    assert _guest_argv("stress", "--scenario", "reentry", "allocator", "--no-isolate",
                       "--duration", "5", "--kernel=all", "--types", "hash", "--force") == [
        "stress", "--duration", "5"]
    assert _guest_argv("bcc-compare", "--tools", "runqlat", "opensnoop", "--kernel",
                       "bookworm", "--runs", "3") == ["bcc-compare", "--runs", "3"]
    assert _guest_argv("maps", "--kernel", "bookworm", "bullseye", "--max-entries", "10",
                       "--results", "out", "--json") == ["maps", "--max-entries", "10", "--json"]


def test_kernel_option_is_parsed_once_into_catalog_entries():
    args = build_parser().parse_args(["info", "--kernel", "bookworm,all", "--kernel",
                                      "bullseye"])
    assert [k.name for k in args.kernels] == [  # in the order named, each once
        "bookworm", "bullseye", "bullseye-rt", "trixie", "trixie-backports"]
    assert build_parser().parse_args(["vm", "box", "--kernel", "trixie"]).kernel is \
        catalog.get("trixie")
    assert build_parser().parse_args(["vm", "run"]).kernels == [catalog.get(catalog.DEFAULT)]


def test_live_console_leaves_the_boot_log_out_once_cmd_started() -> None:
    """A PREEMPT_RT 5.10 guest prints its whole boot log late: it stays in
    console.log, and the live console shows only what came after CMD started."""
    import io
    from types import SimpleNamespace

    from pybpfmap.vm.runner import Streams, _Watch

    out = io.StringIO()
    w = SimpleNamespace(streams=Streams(None, out), echo_buf="", started_up=None)
    _Watch._echo(w, "[    0.000000] Linux version 5.10\npybpfmap-init: sta")
    w.started_up = 13.2
    _Watch._echo(w, "rted\n[    0.500000] smp: Brought up\n[   20.100000] WARNING: x\nprogress\n")
    assert out.getvalue() == ("[    0.000000] Linux version 5.10\npybpfmap-init: started\n"
                              "[   20.100000] WARNING: x\nprogress\n")


def test_evidence_through_any_monitor(tmp_path) -> None:
    """`vm evidence --libvirt` samples through virsh, the runner through its QMP
    socket: one collect_evidence, whatever answers the HMP commands."""
    from pybpfmap.vm.watchdog import STACK_WORDS, collect_evidence

    syms = tmp_path / "kallsyms"
    syms.write_text(KALLSYMS)
    calls = []

    def hmp(command: str, cpu: int | None) -> str:
        calls.append((command, cpu))
        return REGISTERS if command == "info registers -a" else STACK

    ev = collect_evidence(hmp, None, [syms], samples=2)
    assert ev.qemu_answers and calls[:2] == [("info registers -a", None)] * 2
    assert calls[2:] == [(f"x/{STACK_WORDS}gx 0xffffc90000103cf8", 1)]  # on that vCPU
    (stuck,) = [v for v in ev.vcpus if v.stuck]
    assert stuck.cpu == 1 and stuck.irqs_enabled is False
    assert stuck.spin_lock.startswith("pcpu_lock")
    assert stuck.stack == ["_raw_spin_lock_irqsave+0x10", "htab_map_update_elem+0x81"]
    assert "CPU#1 in native_queued_spin_lock_slowpath" in ev.diagnosis


def test_heartbeat_silence_waits_for_a_beat_after_the_hang() -> None:
    """CI's failed run: both vCPUs' beats stopped 0.19 s apart.  When CPU#0 had
    been silent for 5 s CPU#1's last beat was 4.81 s old: not proof that it
    went on.  The verdict waits until it beats again or is silent too."""
    from pybpfmap.vm.runner import heartbeat_silence

    beats = {0: 17.83, 1: 18.02}
    assert heartbeat_silence(beats, 20.0, 5) is None           # nobody late yet
    assert heartbeat_silence(beats, 22.9, 5) is None           # CPU#0 late, CPU#1 undecided
    assert heartbeat_silence(beats, 23.1, 5) == "no heartbeat from any vCPU for 5 s"
    beats[1] = 23.0                                            # CPU#1 beat after the hang
    assert heartbeat_silence(beats, 23.1, 5) == (
        "CPU#0 stuck: no heartbeat from it for 5 s while CPU#1 went on")


def test_heartbeat_silence_names_every_stuck_cpu() -> None:
    from pybpfmap.vm.runner import heartbeat_silence

    beats = {0: 10.0, 1: 12.0, 2: 16.5, 3: 16.9}
    assert heartbeat_silence(beats, 16.95, 5) is None          # CPU#1 not late, not beaten since 15
    assert heartbeat_silence({0: 10.0, 1: 13.0}, 18.6, 5) == (  # CPU#1 stopped 3 s later
        "no heartbeat from any vCPU for 6 s (CPU#0 silent for 9 s, CPU#1 silent for 6 s: "
        "not at once)")
    assert heartbeat_silence(beats, 17.5, 5) == (
        "CPU#0, CPU#1 stuck: no heartbeat from them for 8 s while CPU#2, CPU#3 went on")


def test_control_lines_it_does_not_understand_are_not_fatal() -> None:
    """CMD shares the control port for its marks: a stray or torn line must
    not stop the loop that watches the guest."""
    from types import SimpleNamespace

    from pybpfmap.vm.runner import _Watch

    w = SimpleNamespace(hb_host={}, hb_guest={}, cfg=SimpleNamespace(cpus=2), t0=0.0,
                        release=None, boot_s=None, started_up=None, exit_code=None,
                        exited_at=None)
    for line in ["", "hb 0 12.5", "hb x 1", "hb 1 1.0.0", "mark armed a b uptime=13.0",
                 "start 5.10.0-46-amd64", "exit", "exit zero", "hb 1 13.1"]:
        _Watch._control(w, line, 20.0)
    assert (w.hb_guest, w.release, w.exit_code) == ({0: 12.5, 1: 13.1}, "5.10.0-46-amd64",
                                                     None)
    assert w.hb_host == {0: 20.0, 1: 20.0}
    _Watch._control(w, "exit 3", 21.0)
    assert (w.exit_code, w.exited_at) == (3, 21.0)
