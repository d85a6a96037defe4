"""Evidence for a hung or timed-out guest: where every vCPU is, or why qemu is stuck.

If qemu answers its monitor, the fault is in the guest.  Each vCPU's
registers are sampled a few times (HMP ``info registers -a``); its RIP is
named with the guest's core-kernel ``/proc/kallsyms`` (dumped by the first
boot of each image and cached next to it: the guest boots with ``nokaslr``,
so the addresses hold for every boot; Debian's ``System.map`` is a stub).
For each vCPU the evidence says whether interrupts are enabled (EFLAGS.IF),
and — when it sits in a spin-lock slow path — which lock it spins on (RDI,
the slow path's lock argument, named with kallsyms' data symbols when it is
a static lock such as ``pcpu_lock``), and the kernel-text words found on its
stack (read through the monitor, innermost first: the likely call chain, as
a crude backtrace without frame pointers).

If qemu does not answer, qemu itself is stuck (or stopped): the state and
kernel wait channel of each of its host threads are reported instead.
"""

from __future__ import annotations

import bisect
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pybpfmap.vm.qemu import QmpTimeout, qmp_hmp

_CPU = re.compile(r"^CPU#(\d+)", re.M)
_REG = {name: re.compile(rf"\b{pattern}=([0-9a-f]{{8,16}})") for name, pattern in
        (("RIP", "RIP"), ("RSP", "RSP"), ("RDI", "RDI"), ("FLAGS", "[RE]FL"))}
_HLT = re.compile(r"\bHLT=(\d)")
_MODULES = 0xffffffffc0000000  # x86-64 MODULES_VADDR without KASLR
_KERNEL_HALF = 0xffff800000000000
# Where a CPU waits for a spinning lock (qspinlock, its paravirt variant, the
# resilient rqspinlock of v6.15+, rwlocks, the debug spinlock loop).
SPIN_SLOWPATH = re.compile(r"queued_spin_lock_slowpath|resilient_queued_spin_lock|"
                           r"queued_(read|write)_lock_slowpath|do_raw_spin_lock|"
                           r"__pv_queued_spin_lock")
STACK_WORDS = 256  # 2 KiB of stack read per stuck vCPU
STACK_FRAMES = 40


class SymbolMap:
    """Symbols of a ``System.map`` or ``/proc/kallsyms``: address -> ``name+0xoff``.

    ``kinds`` picks symbol types: text (``tTwW``) by default, data
    (``bBdDrR``) to name a lock's address."""

    TEXT, DATA = "tTwW", "bBdDrR"

    def __init__(self, text: str, kinds: str = TEXT):
        self.kinds = kinds
        syms = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in kinds:
                syms.append((int(parts[0], 16), parts[2]))
        syms.sort()
        self.addrs = [a for a, _ in syms]
        self.names = [n for _, n in syms]
        # The core kernel's text ends at _etext; above it (ftrace and kprobe
        # trampolines, BPF programs) nothing is named by these symbols.
        self.text_end = next((a for a, n in syms if n == "_etext"),
                             self.addrs[-1] if self.addrs else 0)

    @classmethod
    def load(cls, *paths: Path, kinds: str = TEXT) -> SymbolMap:
        """The first of ``paths`` that has such symbols (Debian's System.map is a stub)."""
        for path in paths:
            try:
                syms = cls(path.read_text(errors="replace"), kinds)
            except OSError:
                continue
            if syms.addrs:
                return syms
        return cls("", kinds)

    def lookup(self, addr: int) -> tuple[str, int] | None:
        """(name, offset) of the symbol at or below ``addr`` in the kernel image."""
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0 or addr < 0xffffffff00000000:
            return None
        if addr >= _MODULES and self.addrs[i] < _MODULES:
            return None
        if self.kinds == self.TEXT and self.text_end <= addr < _MODULES:
            return None  # past _etext: a trampoline or BPF program, not a function
        return self.names[i], addr - self.addrs[i]

    def symbolize(self, addr: int) -> str:
        """``'htab_map_update_elem+0x4d'``, or ``'?'`` outside the kernel's image."""
        found = self.lookup(addr)
        if found is None:
            if addr >= _MODULES or (self.addrs and self.text_end <= addr):
                return "? (module, trampoline or BPF program)"
            return "? (user space or unknown)"
        return f"{found[0]}+{found[1]:#x}"

    def in_text(self, addr: int) -> bool:
        """Inside the core kernel's text (from the first text symbol to _etext)."""
        return bool(self.addrs) and self.addrs[0] <= addr < self.text_end and addr < _MODULES


@dataclass
class VcpuState:
    """One vCPU in one register sample."""

    cpu: int
    rip: int
    symbol: str
    halted: bool
    irqs_enabled: bool | None = None
    rsp: int | None = None
    rdi: int | None = None

    @property
    def function(self) -> str:
        return self.symbol.split("+")[0]

    def __str__(self) -> str:
        state = " (halted, idle)" if self.halted else ""
        irq = "" if self.irqs_enabled is None else \
            (" irqs on" if self.irqs_enabled else " IRQS OFF")
        return f"CPU#{self.cpu} RIP={self.rip:#018x} {self.symbol}{irq}{state}"


def parse_registers(text: str, syms: SymbolMap) -> list[VcpuState]:
    """vCPU states from HMP ``info registers -a`` output."""
    out = []
    starts = [(m.start(), int(m.group(1))) for m in _CPU.finditer(text)]
    for k, (pos, cpu) in enumerate(starts):
        block = text[pos: starts[k + 1][0] if k + 1 < len(starts) else len(text)]
        regs = {name: int(m.group(1), 16) for name, pat in _REG.items()
                if (m := pat.search(block))}
        if "RIP" not in regs:
            continue
        hlt = _HLT.search(block)
        out.append(VcpuState(cpu, regs["RIP"], syms.symbolize(regs["RIP"]),
                             bool(hlt and hlt.group(1) == "1"),
                             bool(regs["FLAGS"] & 0x200) if "FLAGS" in regs else None,
                             regs.get("RSP"), regs.get("RDI")))
    return out


# x86's NMI entry path (arch/x86/kernel/nmi.c, entry_64.S): one of them on a
# stack means the CPU is in NMI context.
NMI_ENTRY = ("exc_nmi", "default_do_nmi", "nmi_handle", "asm_exc_nmi", "end_repeat_nmi",
             "nmi", "do_nmi")


@dataclass
class VcpuEvidence:
    """What one vCPU was doing over the samples."""

    cpu: int
    symbol: str                     # RIP symbolized, last sample
    halted: bool
    irqs_enabled: bool | None
    same_function: bool             # in the same function (and not idle) in every sample
    spin_lock: str | None = None    # the lock it spins on, when in a spin-lock slow path
    stack: list[str] = field(default_factory=list)  # kernel text on its stack, innermost first
    heartbeat_age_s: float | None = None  # seconds since this CPU's last guest heartbeat

    @property
    def stuck(self) -> bool:
        """Busy in one function in every sample (and not idle)."""
        return self.same_function and not self.halted

    @property
    def nmi_frame(self) -> str | None:
        """The first x86 NMI entry function on its stack (it runs in NMI context), if any."""
        return next((f for f in self.stack if f.split("+")[0] in NMI_ENTRY), None)

    def describe(self) -> str:
        irq = {None: "", True: ", interrupts on", False: ", interrupts OFF"}[self.irqs_enabled]
        what = "idle (halted)" if self.halted else f"in {self.symbol}{irq}"
        if self.stuck:
            what += ", in the same function in every sample"
        if self.nmi_frame and not self.halted:
            what += f", in NMI context ({self.nmi_frame.split('+')[0]} on its stack)"
        if self.spin_lock:
            what += f", spinning on {self.spin_lock}"
        if self.heartbeat_age_s is not None:
            what += f"; its heartbeat last arrived {self.heartbeat_age_s:.0f} s ago"
        return f"CPU#{self.cpu} {what}"


@dataclass
class Evidence:
    """Why a guest counts as hung, or where it was when the run timed out."""

    qemu_answers: bool
    diagnosis: str
    vcpus: list[VcpuEvidence] = field(default_factory=list)
    samples: list[list[str]] = field(default_factory=list)   # per sample, one line per vCPU
    qemu_threads: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)  # lockup/stall reports the guest printed
    note: str = ""  # what the runner saw (which heartbeats stopped)

    def stuck_cpus(self) -> list[VcpuEvidence]:
        return [v for v in self.vcpus if v.stuck]

    def brief(self, frames: int = 8) -> str:
        """One line per stuck CPU: where, IRQ state, the lock, the top of its stack."""
        if not self.qemu_answers:
            return self.diagnosis
        parts = []
        for v in self.stuck_cpus():
            irq = {None: "", True: ", IRQs on", False: ", IRQs off"}[v.irqs_enabled]
            lock = f", spinning on {v.spin_lock.split(' (')[0]}" if v.spin_lock else ""
            chain = " <- ".join(f.split("+")[0] for f in v.stack[:frames])
            nmi = f", in NMI context ({v.nmi_frame.split('+')[0]})" if v.nmi_frame else ""
            parts.append(f"CPU#{v.cpu} in {v.symbol.split('+')[0]}{irq}{nmi}{lock}"
                         + (f"; stack {chain}" if chain else ""))
        return "; ".join(parts) or self.diagnosis

    def text(self) -> str:
        """The human report."""
        out = [self.note] if self.note else []
        if not self.qemu_answers:
            out.append("qemu does not answer its monitor: the fault is in qemu or the "
                       "host, not the guest.  qemu threads:")
            out += [f"  {t}" for t in self.qemu_threads] or ["  (no /proc entry)"]
            return "\n".join(out)
        out.append("qemu answers its monitor (qemu is not what is stuck); vCPUs "
                   "(RIP symbolized with the guest's kallsyms):")
        for n, sample in enumerate(self.samples, 1):
            out.append(f"sample {n}:")
            out += [f"  {line}" for line in sample]
        for v in self.vcpus:
            out.append(v.describe())
            if v.stack:
                out.append(f"  stack (kernel text words, innermost first): "
                           f"{' <- '.join(v.stack)}")
        for line in self.console:
            out.append(f"console: {line}")
        out.append(f"diagnosis: {self.diagnosis}")
        return "\n".join(out)


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
        lines.append(f"thread {task.name} ({comm}): state {state}, wchan {wchan}")
    return lines


def stack_words(dump: str, text: SymbolMap) -> list[str]:
    """Kernel-text return addresses in an HMP ``x/Ngx`` dump, innermost first.

    A word pointing exactly at a symbol is a function pointer, not a return
    address, and is left out; repeats in a row are shown once."""
    frames: list[str] = []
    for line in dump.splitlines():
        _, _, words = line.partition(":")
        for w in re.findall(r"0x([0-9a-f]{16})", words):
            addr = int(w, 16)
            if not text.in_text(addr):
                continue
            found = text.lookup(addr)
            if found is None or found[1] == 0:
                continue
            name = f"{found[0]}+{found[1]:#x}"
            if not frames or frames[-1] != name:
                frames.append(name)
    return frames[:STACK_FRAMES]


def lock_name(addr: int | None, data: SymbolMap) -> str | None:
    """A spin-lock address as a kernel data symbol, or why it has no name."""
    if addr is None:
        return None
    found = data.lookup(addr)
    if found is not None and addr < _MODULES:
        name, off = found
        return f"{name}" + (f"+{off:#x}" if off else "") + f" ({addr:#x})"
    if addr >= _KERNEL_HALF:
        return (f"{addr:#x} (not a static kernel symbol: a lock in allocated or per-CPU "
                "memory, such as a slab cache node's list_lock or a hash bucket)")
    return None


# An HMP command on one vCPU (None: the monitor's current one) -> its text output.
Hmp = Callable[[str, "int | None"], str]


def qmp_monitor(qmp_sock: Path) -> Hmp:
    """HMP through the runner's own QMP socket."""
    return lambda command, cpu: qmp_hmp(qmp_sock, command, cpu_index=cpu)


def libvirt_monitor(domain: str, uri: str = "qemu:///system", timeout: float = 10.0) -> Hmp:
    """HMP through libvirt (``virsh qemu-monitor-command``): a Vagrant-libvirt guest."""
    import json
    import subprocess

    def hmp(command: str, cpu: int | None) -> str:
        args: dict = {"command-line": command}
        if cpu is not None:
            args["cpu-index"] = cpu
        msg = json.dumps({"execute": "human-monitor-command", "arguments": args})
        try:
            p = subprocess.run(["virsh", "-c", uri, "qemu-monitor-command", domain, msg],
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise QmpTimeout(f"virsh: no answer in {timeout:.0f} s") from e
        if p.returncode != 0:
            raise QmpTimeout(f"virsh: {p.stderr.strip() or p.returncode}")
        return json.loads(p.stdout).get("return", "")

    return hmp


def collect_evidence(hmp: Hmp, pid: int | None, symbol_files: list[Path],
                     heartbeat_ages: dict[int, float] | None = None, samples: int = 3,
                     note: str = "") -> Evidence:
    """Where the vCPUs are (``samples`` dumps, 0.5 s apart) or why qemu cannot say.
    ``hmp`` is :func:`qmp_monitor` (the runner's own qemu) or :func:`libvirt_monitor`;
    ``pid`` is qemu's, when known, for its thread states if it does not answer."""
    text_syms = SymbolMap.load(*symbol_files)
    seen: list[list[VcpuState]] = []
    try:
        for n in range(samples):
            seen.append(parse_registers(hmp("info registers -a", None), text_syms))
            if n + 1 < samples:
                time.sleep(0.5)
        vcpus = _per_vcpu(seen, hmp, text_syms, symbol_files, heartbeat_ages or {})
    except QmpTimeout as e:
        return Evidence(False, f"qemu does not answer its monitor ({e})",
                        qemu_threads=_thread_states(pid) if pid else [], note=note)
    return Evidence(True, diagnose(vcpus), vcpus,
                    [[str(v) for v in sample] for sample in seen], note=note)


def _per_vcpu(seen: list[list[VcpuState]], hmp: Hmp, text_syms: SymbolMap,
              symbol_files: list[Path], ages: dict[int, float]) -> list[VcpuEvidence]:
    data_syms: SymbolMap | None = None
    out = []
    for cpu in sorted({v.cpu for s in seen for v in s}):
        states = [v for s in seen for v in s if v.cpu == cpu]
        last = states[-1]
        same = len({v.function for v in states}) == 1 and not any(v.halted for v in states)
        ev = VcpuEvidence(cpu, last.symbol, last.halted, last.irqs_enabled, same,
                          heartbeat_age_s=ages.get(cpu))
        if same:
            if SPIN_SLOWPATH.search(last.function):
                data_syms = data_syms or SymbolMap.load(*symbol_files, kinds=SymbolMap.DATA)
                ev.spin_lock = lock_name(last.rdi, data_syms)
            if last.rsp is not None:
                dump = hmp(f"x/{STACK_WORDS}gx {last.rsp:#x}", cpu)
                ev.stack = stack_words(dump, text_syms)
        out.append(ev)
    return out


# Where a CPU waits for others to run a function it sent them (an IPI): a CPU
# stuck here is held up by the CPU that does not answer, not by a lock of its own.
CROSS_CPU_WAIT = re.compile(r"(smp_call_function|on_each_cpu|csd_lock_wait)")


def diagnose(vcpus: list[VcpuEvidence]) -> str:
    """One line: idle everywhere, or which CPUs are stuck where."""
    if vcpus and all(v.halted for v in vcpus):
        return ("every vCPU is idle in every sample: no kernel spin; a task waits "
                "forever (or user space stopped the heartbeat)")
    stuck = [v for v in vcpus if v.stuck]
    if stuck:
        parts = []
        for v in stuck:
            part = f"CPU#{v.cpu} in {v.symbol.split('+')[0]}"
            if v.irqs_enabled is False:
                part += " with interrupts off"
            if v.spin_lock:
                part += f" spinning on {v.spin_lock.split(' (')[0]}"
            if CROSS_CPU_WAIT.match(v.symbol):
                part += " (waiting for another CPU to run its cross-CPU call)"
            parts.append(part)
        others = [f"CPU#{v.cpu} {'idle' if v.halted else 'moving'}" for v in vcpus
                  if not v.stuck]
        return ("busy in the same function in every sample: " + ", ".join(parts)
                + (f" ({', '.join(others)})" if others else ""))
    return "vCPUs moving between functions (livelock or very slow progress)"
