"""What the running kernel can do, found by looking, not by version numbers.

:func:`probe` returns a :class:`Kernel` record: kprobes or not (and why not),
whether this is a VM, which headers BCC uses, ``kernel.bpf_stats_enabled``,
and which spin_unlock functions can take a kprobe here.  The test suite's
skip reasons come from this record (tests/conftest.py).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import asdict, dataclass, field

from pybpfmap.headers import TRACEFS, headers_in_use

KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"
KPROBE_BLACKLIST = "/sys/kernel/debug/kprobes/blacklist"
BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"

# The spin_unlock entry points a lock-path deadlock check needs.  Any of them
# may be inlined into its callers (CONFIG_INLINE_SPIN_UNLOCK* in
# kernel/Kconfig.locks), in which case there is no symbol to probe.
UNLOCK_FUNCTIONS = (
    "_raw_spin_unlock",
    "_raw_spin_unlock_irqrestore",
    "_raw_spin_unlock_irq",
    "_raw_spin_unlock_bh",
)


@dataclass
class Kernel:
    """The running kernel's capabilities, each with the reason when absent."""

    kernel_release: str
    root: bool
    kprobes: bool
    kprobes_reason: str
    in_vm: bool
    virt: str
    headers: dict | None
    bpf_stats_enabled: dict
    unlock_symbols: list[str]
    unlock_unavailable: dict[str, str] = field(default_factory=dict)
    tracefs: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def kprobes_available() -> tuple[bool, str]:
    """(available, reason).  The kprobe PMU (what BCC attaches through) exists
    only when the kernel has CONFIG_KPROBES and CONFIG_KPROBE_EVENTS."""
    if os.path.isdir(KPROBE_PMU):
        return True, f"kprobe PMU present ({KPROBE_PMU})"
    if os.path.exists(os.path.join(TRACEFS, "kprobe_events")):
        return True, "kprobe_events present in tracefs"
    return False, (f"kernel built without CONFIG_KPROBES (or CONFIG_KPROBE_EVENTS): no "
                   f"{KPROBE_PMU} and no {TRACEFS}/kprobe_events; use the test VM "
                   "(pybpfmap vm run)")


def detect_vm() -> tuple[bool, str]:
    """(in a VM, what kind).  The CPUID hypervisor bit is the ground truth;
    systemd-detect-virt, when present, names the hypervisor."""
    cpuinfo = _read("/proc/cpuinfo") or ""
    flagged = bool(re.search(r"^flags\s*:.*\bhypervisor\b", cpuinfo, re.M))
    name = ""
    try:
        out = subprocess.run(["systemd-detect-virt", "--vm"], capture_output=True,
                             text=True, timeout=5)
        name = out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    if name and name != "none":
        return True, name
    return flagged, "hypervisor CPUID flag" if flagged else "none"


def bpf_stats() -> dict:
    """kernel.bpf_stats_enabled: present or not, and its value (run_cnt and
    run_time_ns in bpf_prog_info are only counted while it is 1)."""
    text = _read(BPF_STATS)
    if text is None:
        return {"available": False, "enabled": False,
                "reason": f"{BPF_STATS} missing (kernel older than v5.1)"}
    return {"available": True, "enabled": text.strip() == "1", "reason": ""}


def unlock_symbols(kprobes: bool, kprobes_reason: str) -> tuple[list[str], dict[str, str]]:
    """The spin_unlock functions that can take a kprobe here, and for the
    others why not."""
    if not kprobes:
        return [], {f: kprobes_reason for f in UNLOCK_FUNCTIONS}
    traceable = _read(os.path.join(TRACEFS, "available_filter_functions"))
    blacklist_text = _read(KPROBE_BLACKLIST)
    blacklisted = set()
    if blacklist_text:
        for line in blacklist_text.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                blacklisted.add(parts[1])
    names = set()
    if traceable:
        names = {line.split()[0] for line in traceable.splitlines() if line}
    kallsyms = _read("/proc/kallsyms") or ""
    ok, why = [], {}
    for func in UNLOCK_FUNCTIONS:
        if func in blacklisted:
            why[func] = f"in the kprobe blacklist ({KPROBE_BLACKLIST})"
        elif traceable is not None and func not in names:
            in_kallsyms = re.search(rf" {re.escape(func)}$", kallsyms, re.M)
            why[func] = ("not traceable (notrace)" if in_kallsyms else
                         "inlined into its callers (CONFIG_INLINE_SPIN_UNLOCK*): no symbol")
        elif traceable is None and not re.search(rf" {re.escape(func)}$", kallsyms, re.M):
            why[func] = "no such symbol in /proc/kallsyms (inlined)"
        else:
            ok.append(func)
    return ok, why


def probe() -> Kernel:
    """Look at the running kernel and return what it can do."""
    kprobes, reason = kprobes_available()
    in_vm, virt = detect_vm()
    symbols, unavailable = unlock_symbols(kprobes, reason)
    headers = headers_in_use()
    return Kernel(
        kernel_release=os.uname().release,
        root=os.geteuid() == 0,
        kprobes=kprobes,
        kprobes_reason=reason,
        in_vm=in_vm,
        virt=virt,
        headers=headers.as_dict() if headers else None,
        bpf_stats_enabled=bpf_stats(),
        unlock_symbols=symbols,
        unlock_unavailable=unavailable,
        tracefs=os.path.exists(os.path.join(TRACEFS, "trace")),
    )
