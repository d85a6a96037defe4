"""Host-only unit tests of the VM runner's pieces (no qemu, no root)."""

from __future__ import annotations

import shlex

from pybpfmap.vm import guest
from pybpfmap.vm.qemu import QemuConfig, kernel_cmdline, qemu_argv
from pybpfmap.vm.watchdog import SymbolMap, diagnose, parse_registers

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81a3c2d0 T default_idle
ffffffff81a3c300 t default_idle_call
ffffffff812b4a10 T htab_map_update_elem
ffffffff82000000 D some_data
ffffffffc0200000 t bpf_prog_x [bpf]
"""

REGISTERS = """\
CPU#0
RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000001 RDX=0000000000000000
RSI=0000000000000083 RDI=0000000000004e34 RBP=ffffffff82a0a8c0 RSP=ffffffff82a03e98
RIP=ffffffff81a3c2de RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
CPU#1
RAX=0000000000000001 RBX=ffff888004b2c000
RIP=ffffffff812b4a5d RFL=00000086 [--S--P-] CPL=0 II=0 A20=1 SMM=0 HLT=0
"""


def test_symbolize_kallsyms_and_data_is_skipped():
    syms = SymbolMap(KALLSYMS)
    assert syms.symbolize(0xffffffff81a3c2de) == "default_idle+0xe"
    assert syms.symbolize(0xffffffff812b4a10) == "htab_map_update_elem+0x0"
    assert syms.symbolize(0x4f399d2).startswith("?")
    assert syms.symbolize(0xffffffffc0100000) == "? (module or BPF program)"
    assert syms.symbolize(0xffffffffc0200004) == "bpf_prog_x+0x4"


def test_parse_info_registers():
    cpus = parse_registers(REGISTERS, SymbolMap(KALLSYMS))
    assert [(c.cpu, c.symbol, c.halted) for c in cpus] == [
        (0, "default_idle+0xe", True), (1, "htab_map_update_elem+0x4d", False)]
    assert str(cpus[1]).startswith("CPU#1 RIP=0xffffffff812b4a5d htab_map_update_elem+0x4d")


def test_cmd_sh_quotes_exactly():
    cmd = ["sh", "-c", "echo 'a b' \"$X\"; exit 7"]
    script = guest.cmd_sh(cmd)
    assert shlex.split(script) == ["exec", *cmd]


def test_is_pytest():
    assert guest.is_pytest(["python3", "-m", "pytest", "-x"])
    assert guest.is_pytest(["/usr/bin/pytest-3"])
    assert not guest.is_pytest(["python3", "-m", "pybpfmap", "stress"])
    assert not guest.is_pytest(["uname", "-r"])


def test_env_sh_exports_results_and_in_vm_flags():
    env = guest.env_sh("/work/main", {"EXTRA": "x y"})
    assert "export PYBPFMAP_RESULTS=/run/pybpfmap/results" in env
    assert "export PYBPFMAP_IN_TEST_VM=1" in env
    assert "export EXTRA='x y'" in env


def test_qemu_argv_is_read_only_base_and_no_reboot(tmp_path):
    c = QemuConfig(kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd.img",
                   disk=tmp_path / "overlay.qcow2", ctl_dir=tmp_path, repo=tmp_path,
                   results=tmp_path / "r", run_dir=tmp_path)
    argv = qemu_argv(c)
    assert "-no-reboot" in argv
    assert argv[argv.index("-accel") + 1] == "tcg,thread=single"
    assert any("overlay.qcow2" in a for a in argv)
    assert "panic=-1" in kernel_cmdline() and "nokaslr" in kernel_cmdline()


def test_diagnose_spin_vs_idle():
    cpus = parse_registers(REGISTERS, SymbolMap(KALLSYMS))
    assert "CPU#1 in htab_map_update_elem" in diagnose([cpus, cpus, cpus])
    assert "every vCPU is idle" in diagnose([[cpus[0]], [cpus[0]]])
