"""Evidence for a hung or timed-out guest: where every vCPU is, or why qemu is stuck.

If qemu answers its monitor, the fault is in the guest: we read every vCPU's
registers (HMP ``info registers -a``) and name the kernel function at each RIP
with the guest's core-kernel ``/proc/kallsyms``, dumped by the first boot of
each image and cached next to it (the guest boots with ``nokaslr``, so the
addresses hold for every boot; Debian's ``System.map`` is only a stub).  If
qemu does not answer, qemu itself is stuck (or stopped): we report the state
and kernel wait channel of each of its host threads instead.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

from pybpfmap.vm.qemu import QmpTimeout, qmp_hmp

_CPU = re.compile(r"^CPU#(\d+)", re.M)
_RIP = re.compile(r"RIP=([0-9a-f]{16})")
_HLT = re.compile(r"\bHLT=(\d)")
_MODULES = 0xffffffffc0000000  # x86-64 MODULES_VADDR without KASLR


class SymbolMap:
    """Text symbols of a ``System.map`` or ``/proc/kallsyms``: address → ``func+0xoff``."""

    def __init__(self, text: str):
        syms = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tTwW":
                syms.append((int(parts[0], 16), parts[2]))
        syms.sort()
        self.addrs = [a for a, _ in syms]
        self.names = [n for _, n in syms]

    @classmethod
    def load(cls, *paths: Path) -> SymbolMap:
        """The first of ``paths`` that has text symbols (Debian's System.map is a stub)."""
        for path in paths:
            try:
                syms = cls(path.read_text(errors="replace"))
            except OSError:
                continue
            if syms.addrs:
                return syms
        return cls("")

    def symbolize(self, addr: int) -> str:
        """``'htab_map_update_elem+0x4d'``, or ``'?'`` outside the kernel's text."""
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0 or addr < 0xffffffff00000000:
            return "? (user space or unknown)"
        if addr >= _MODULES and self.addrs[i] < _MODULES:
            return "? (module or BPF program)"
        return f"{self.names[i]}+{addr - self.addrs[i]:#x}"


@dataclass
class VcpuState:
    cpu: int
    rip: int
    symbol: str
    halted: bool

    def __str__(self) -> str:
        state = " (halted, idle)" if self.halted else ""
        return f"CPU#{self.cpu} RIP={self.rip:#018x} {self.symbol}{state}"


def parse_registers(text: str, syms: SymbolMap) -> list[VcpuState]:
    """vCPU states from HMP ``info registers -a`` output."""
    out = []
    starts = [(m.start(), int(m.group(1))) for m in _CPU.finditer(text)]
    for k, (pos, cpu) in enumerate(starts):
        block = text[pos: starts[k + 1][0] if k + 1 < len(starts) else len(text)]
        rip = _RIP.search(block)
        if not rip:
            continue
        hlt = _HLT.search(block)
        addr = int(rip.group(1), 16)
        out.append(VcpuState(cpu, addr, syms.symbolize(addr), bool(hlt and hlt.group(1) == "1")))
    return out


def _thread_states(pid: int) -> list[str]:
    lines = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            stat = (task / "stat").read_text()
            comm = stat[stat.index("(") + 1: stat.rindex(")")]
            state = stat[stat.rindex(")") + 2]
            wchan = (task / "wchan").read_text().strip() or "-"
        except (OSError, ValueError):
            continue
        lines.append(f"  thread {task.name} ({comm}): state {state}, wchan {wchan}")
    return lines


def collect_evidence(qmp_sock: Path, pid: int, symbol_files: list[Path],
                     samples: int = 3) -> str:
    """Where the vCPUs are (``samples`` dumps, 0.5 s apart) or why qemu cannot say."""
    import time

    syms = SymbolMap.load(*symbol_files)
    dumps: list[str] = []
    seen: list[list[VcpuState]] = []
    for n in range(samples):
        try:
            regs = qmp_hmp(qmp_sock, "info registers -a", timeout=5.0)
        except QmpTimeout as e:
            states = "\n".join(_thread_states(pid)) or "  (no /proc entry)"
            return (f"qemu does not answer its monitor ({e}): the fault is in qemu or "
                    f"the host, not the guest.  qemu (pid {pid}) threads:\n{states}")
        vcpus = parse_registers(regs, syms)
        seen.append(vcpus)
        dumps.append(f"sample {n + 1}:\n" + "\n".join(f"  {v}" for v in vcpus))
        if n + 1 < samples:
            time.sleep(0.5)
    return ("qemu answers its monitor (qemu is not what is stuck); vCPUs "
            "(RIP symbolized with the guest's kallsyms):\n" + "\n".join(dumps)
            + "\n" + diagnose(seen))


def diagnose(samples: list[list[VcpuState]]) -> str:
    """One line from repeated vCPU samples: idle everywhere, or spinning where."""
    flat = [v for s in samples for v in s]
    if flat and all(v.halted for v in flat):
        return ("diagnosis: every vCPU is idle in every sample: no kernel spin; a task "
                "waits forever (or user space stopped the heartbeat)")
    spinning = []
    for cpu in sorted({v.cpu for v in flat}):
        funcs = {v.symbol.split("+")[0] for v in flat if v.cpu == cpu and not v.halted}
        if len(funcs) == 1 and all(not v.halted for v in flat if v.cpu == cpu):
            spinning.append(f"CPU#{cpu} in {funcs.pop()}")
    if spinning:
        return "diagnosis: busy in the same function in every sample: " + ", ".join(spinning)
    return "diagnosis: vCPUs moving between functions (livelock or very slow progress)"
