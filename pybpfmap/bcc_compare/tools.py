"""The BCC tools compared, what each attaches to, and the workload that drives it.

Every tool here has the start/end pattern of the seed commit (6c9059817432,
"update quickly followed by lookup+delete is very common in iovisor/bcc/tools"):
one probe ``update``s a ``BPF_HASH`` entry, a later one looks it up and deletes
it.  ``attach`` records what the *installed* Debian bpfcc-tools 0.26 script
attaches to (read from ``/usr/sbin/<tool>-bpfcc``); ``needs_kprobes`` is true
when it cannot run without kprobes, so on a kernel without CONFIG_KPROBES it
runs in the test VM instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from pybpfmap.errors import EnvironmentProblem, UsageError

TOOL_DIR = "/usr/sbin"
SUFFIX = "-bpfcc"


@dataclass(frozen=True)
class Tool:
    """One BCC tool and how pybpfmap exercises it."""

    name: str
    args: tuple[str, ...]
    workload: str          # a name in pybpfmap.workloads.WORKLOADS
    attach: str            # what the shipped script attaches to
    needs_kprobes: bool
    output: str            # regex that the tool's normal output must match
    hash_maps: tuple[str, ...] = field(default=())  # its start/end BPF_HASH maps
    kprobe_targets: str = ""   # for the skip reason
    kfunc_first: bool = False  # tries kfunc (fentry) before kprobes: worth a try here
    script: str | None = None  # another script than the installed tool (tests' stand-ins)

    @property
    def path(self) -> str:
        return self.script or os.path.join(TOOL_DIR, self.name + SUFFIX)

    def installed(self) -> bool:
        return os.access(self.path, os.X_OK)


TOOLS: dict[str, Tool] = {t.name: t for t in (
    Tool("runqlat", (), "wakeups",
         "raw tracepoints sched_wakeup, sched_wakeup_new, sched_switch "
         "(kprobes only when raw tracepoints are missing)",
         False, r"usecs\s+: count\s+distribution", ("start",)),
    Tool("funclatency", ("c:getpid",), "getpid",
         "uprobe + uretprobe on libc getpid", False,
         r"nsecs\s+: count\s+distribution", ("start",)),
    Tool("tcplife", (), "tcp_connect",
         "tracepoint sock:inet_sock_set_state", False,
         r"127\.0\.0\.1\s+\d+\s+127\.0\.0\.1", ("birth", "whoami")),
    Tool("syscount", ("-L",), "open",
         "tracepoints raw_syscalls:sys_enter, sys_exit", False,
         r"SYSCALL\s+COUNT\s+TIME", ("start",)),
    Tool("biolatency", (), "block_io",
         "kprobes blk_mq_start_request, blk_account_io_done (or __blk_account_io_done)",
         True, r"usecs\s+: count\s+distribution", ("start",),
         "blk_mq_start_request, blk_account_io_done"),
    Tool("opensnoop", (), "open",
         "kretfunc (fentry/fexit trampoline) on the open syscalls when the kernel has "
         "BTF and trampolines, otherwise kprobes + kretprobes on them",
         True, r"/dev/null", ("infotmp",), "the open/openat/openat2 syscalls", True),
    Tool("tcpconnect", (), "tcp_connect",
         "kprobes + kretprobes tcp_v4_connect, tcp_v6_connect", True,
         r"127\.0\.0\.1\s+127\.0\.0\.1", ("currsock",), "tcp_v4_connect"),
)}

DEFAULT_TOOLS = ("biolatency", "runqlat", "opensnoop", "tcpconnect", "funclatency",
                 "tcplife", "syscount")


def select(names: list[str] | None) -> list[Tool]:
    """The tools named (all by default); UsageError for an unknown name,
    EnvironmentProblem if bpfcc-tools is not installed."""
    names = list(names or DEFAULT_TOOLS)
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise UsageError("--tools", f"unknown tool {', '.join(unknown)}; valid: "
                         f"{', '.join(TOOLS)}")
    tools = [TOOLS[n] for n in dict.fromkeys(names)]
    missing = [t.path for t in tools if not t.installed()]
    if missing:
        raise EnvironmentProblem("bpfcc-tools", f"{', '.join(missing)} not found: install "
                                 "Debian's bpfcc-tools (apt-get install bpfcc-tools)")
    return tools


def output_evidence(tool: Tool, stdout: str) -> str | None:
    """The first line of ``stdout`` showing the tool produced its normal output."""
    pattern = re.compile(tool.output)
    for line in stdout.splitlines():
        if pattern.search(line):
            return line.strip()
    return None
