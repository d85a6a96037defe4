"""What the running kernel can do, found by looking, not by version numbers.

:func:`probe` returns a :class:`Kernel` record: kprobes or not (and why not),
whether this is a VM (and which test-VM kernel), PREEMPT_RT, which headers
BCC uses, ``kernel.bpf_stats_enabled``, RLIMIT_MEMLOCK and whether the kernel
charges maps to it, which spin_unlock functions can take a kprobe here, and
the era facts (:mod:`pybpfmap.kfacts`: which hash-map commits it has, each
probed or assumed from the version).
The test suite's skip reasons come from this record (tests/conftest.py);
``pybpfmap info`` prints it (:func:`render`).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import asdict, dataclass, field

from pybpfmap import era, kfacts, memlock, tracefs
from pybpfmap.errors import PybpfmapError
from pybpfmap.guest import Accel, guest_accel, guest_kernel
from pybpfmap.headers import ensure_headers, headers_in_use
from pybpfmap.memlock import MemlockLimit
from pybpfmap.output import md_table
from pybpfmap.records import from_json
from pybpfmap.tracefs import TRACEFS, ensure_tracefs

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
    preempt_rt: bool = False
    memlock: MemlockLimit | None = None
    where: str = "host"                 # "host", or "vm:<catalog kernel>" in the test VM
    accel: Accel | None = None          # in the test VM: how qemu runs it
    era: str = ""                       # pybpfmap.era.era_of(the facts).name
    problems: list[str] = field(default_factory=list)
    facts: list[kfacts.FactRecord] = field(default_factory=list)  # probed or from the version

    def as_dict(self) -> dict:
        return asdict(self)

    def kernel_facts(self) -> kfacts.KernelFacts:
        """The era facts this record carries (:mod:`pybpfmap.kfacts`)."""
        return kfacts.KernelFacts.from_records(self.kernel_release, self.preempt_rt,
                                               self.facts)


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
    traceable = tracefs.traceable_functions()
    blacklist_text = _read(KPROBE_BLACKLIST)
    blacklisted = set()
    if blacklist_text:
        for line in blacklist_text.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                blacklisted.add(parts[1])
    names = traceable or set()
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


def preempt_rt() -> bool:
    """PREEMPT_RT kernels have /sys/kernel/realtime (reading 1)."""
    return kfacts.preempt_rt()


def place() -> tuple[str, Accel | None]:
    """("host", None) or ("vm:<catalog kernel>", accel) inside the test VM."""
    name = guest_kernel()
    return (f"vm:{name}", guest_accel()) if name else ("host", None)


def probe(verifier: bool = False) -> Kernel:
    """Look at the running kernel and return what it can do.  ``verifier``:
    ask the verifier for its era facts too (:func:`pybpfmap.kfacts.probe`:
    it WARNs once per boot on 5.7-6.0, so only a caller that expects that does)."""
    kprobes, reason = kprobes_available()
    in_vm, virt = detect_vm()
    symbols, unavailable = unlock_symbols(kprobes, reason)
    headers = headers_in_use()
    where, accel = place()
    release = os.uname().release
    facts = kfacts.probe(release, verifier=verifier)
    return Kernel(
        kernel_release=release,
        root=os.geteuid() == 0,
        kprobes=kprobes,
        kprobes_reason=reason,
        in_vm=in_vm,
        virt=virt,
        headers=headers.as_dict() if headers else None,
        bpf_stats_enabled=bpf_stats(),
        unlock_symbols=symbols,
        unlock_unavailable=unavailable,
        tracefs=tracefs.mounted(),
        preempt_rt=preempt_rt(),
        memlock=memlock.current() if os.geteuid() == 0 else None,
        where=where,
        accel=accel,
        era=era.era_of(facts).name,
        facts=facts.records(),
    )


def prepared_probe() -> Kernel:
    """Mount tracefs, link headers, raise RLIMIT_MEMLOCK where the kernel charges
    it (as root), then :func:`probe`, the verifier's facts included (``info``
    declares the WARN that prints on 5.7-6.0); what could not be set up is in
    ``problems``."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root: tracefs, headers and RLIMIT_MEMLOCK were not set up "
                        "(run with sudo)")
    else:
        for step in (ensure_tracefs, ensure_headers, memlock.ensure_unlimited):
            try:
                step()
            except PybpfmapError as e:
                problems.append(e.message())
    k = probe(verifier=True)
    k.problems = problems
    return k


def load(data: list) -> list[Kernel]:
    """``info --json``'s document: one record per kernel looked at."""
    return [from_json(Kernel, d) for d in data]


def render(k: Kernel) -> str:
    """``pybpfmap info``'s text."""
    stats = k.bpf_stats_enabled
    lines = [
        ("kernel release", f"{k.kernel_release} (era {k.era})"),
        ("where", k.where + (f" (accel {k.accel})" if k.accel else "")),
        ("root", "yes" if k.root else "no"),
        ("in a VM", f"yes ({k.virt})" if k.in_vm else "no"),
        ("PREEMPT_RT", "yes" if k.preempt_rt else "no"),
        ("kprobes", f"{'yes' if k.kprobes else 'no'}: {k.kprobes_reason}"),
        ("tracefs", "mounted" if k.tracefs else "missing"),
        ("headers", (k.headers or {}).get("target", "none")),
    ]
    if k.headers:
        lines.append(("", k.headers["note"]))
    lines.append(("bpf_stats_enabled", ("on" if stats["enabled"] else "off (available)")
                  if stats["available"] else stats["reason"]))
    lines.append(("RLIMIT_MEMLOCK", k.memlock.describe() if k.memlock else
                  "not probed (needs root)"))
    if not k.kprobes:
        lines.append(("unlock symbols", "none: no kprobes on this kernel"))
    else:
        lines.append(("unlock symbols", ", ".join(k.unlock_symbols) or "none"))
        lines += [("", f"not {sym}: {why}") for sym, why in k.unlock_unavailable.items()]
    lines += [("problem", p) for p in k.problems]
    lines += _fact_lines(k)
    return "\n".join(f"{a:<18} {b}".rstrip() for a, b in lines)


def _fact_lines(k: Kernel) -> list[tuple[str, str]]:
    """The "era facts" block: each commit present or absent, probed or from the version."""
    out = []
    for i, f in enumerate(k.facts):
        mark = "probed" if f.source is kfacts.Source.PROBED else "version"
        out.append(("era facts" if i == 0 else "",
                    f"{'+' if f.present else '-'} {f.commit} [{mark}] {f.how}"))
    return out


def markdown(k: Kernel) -> str:
    """``pybpfmap info`` as a Markdown table (the report's section)."""
    rows = [["kernel", f"{k.kernel_release} (era {k.era})"], ["where", k.where],
            ["in a VM", f"{k.in_vm} ({k.virt})"], ["PREEMPT_RT", k.preempt_rt],
            ["kprobes", f"{k.kprobes}: {k.kprobes_reason}"],
            ["headers", (k.headers or {}).get("note", "none")],
            ["RLIMIT_MEMLOCK", k.memlock.describe() if k.memlock else "not probed"],
            ["unlock symbols", ", ".join(k.unlock_symbols) or "none"]]
    rows += [[f"not {sym}", why] for sym, why in k.unlock_unavailable.items()]
    rows += [["problem", p] for p in k.problems]
    return md_table(["", ""], rows)


def render_markdown(records: list[Kernel]) -> str:
    return "\n".join(markdown(k) for k in records)
