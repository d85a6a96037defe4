"""Find kernel splats (WARN, BUG, lockdep, stalls, KASAN, Oops...) in dmesg text.

A pure function over text, so it works the same on a guest's dmesg brought back
by the VM runner and on the host's own ``dmesg`` (the stress command uses it
there).  As in libbpf/ci's check-kernel-splats: a WARN leaves the kernel
running, so a test can exit 0 over a splat; the caller turns a splat into a
failure.

>>> find_splats("[ 1.0] WARNING: CPU: 0 PID: 1 at kernel/bpf/x.c:1 f+0x1/0x2")[0].kind
'warning'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

# (kind, pattern), most specific first: the first pattern that matches a line names it.
DENY: tuple[tuple[str, str], ...] = (
    ("lockdep", r"possible recursive locking detected"),
    ("lockdep", r"possible circular locking dependency detected"),
    ("lockdep", r"inconsistent lock state|possible irq lock inversion dependency"),
    ("rcu", r"suspicious RCU usage"),
    ("rcu_stall", r"rcu: INFO: rcu_\w+ (self-)?detected stall|rcu_\w+ detected stalls? on CPU"),
    ("soft_lockup", r"BUG: soft lockup"),
    ("hard_lockup", r"Watchdog detected hard LOCKUP|NMI watchdog: .*hard LOCKUP"),
    ("hung_task", r"INFO: task \S+ blocked for more than \d+ seconds"),
    ("kasan", r"BUG: KASAN:|KASAN: "),
    ("ubsan", r"UBSAN: "),
    ("kmemleak", r"kmemleak: \d+ new suspected memory leaks"),
    ("gpf", r"general protection fault"),
    ("oops", r"\bOops: |\bOops\[#|BUG: unable to handle|BUG: kernel NULL pointer dereference"),
    ("panic", r"Kernel panic - not syncing"),
    ("bug", r"kernel BUG at |\bBUG: "),
    ("warning", r"\bWARNING: "),
)

# Lines that match DENY but are known to be benign.
ALLOW: tuple[str, ...] = (
    # Boot-time mitigation notices printed with "WARNING:" (arch/x86/kernel/cpu/bugs.c).
    r"Spectre V2 : WARNING: ",
    r"WARNING: Spectre v2 mitigation leaves CPU vulnerable",
    # Printed by some firmware/qemu combinations, not a kernel splat.
    r"WARNING: Unprivileged eBPF is enabled",
)

_TIMESTAMP = re.compile(r"^(?:<\d+>)?\[\s*(\d+\.\d+)\]\s?")
# A splat's report is printed in one go: a line more than this many seconds
# after the splat line belongs to something else.
REPORT_GAP = 1.0


def _stamp(line: str) -> float | None:
    m = _TIMESTAMP.match(line)
    return float(m.group(1)) if m else None


_END = re.compile(r"---\[ end (trace|Kernel panic)")


@dataclass(frozen=True)
class Splat:
    """One splat: its kind, the 1-based line number, the line and its report."""

    kind: str
    lineno: int
    line: str
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Allowed:
    """A splat that is expected: ``pattern`` matches its first line and
    ``message`` (when given) the text printed with it — the line or two before
    it (WARN's own message) or its report; the whole report (call trace
    included) is then excused, at most ``times`` times (None: every time), so
    that a WARN_ONCE the kernel era explains is excused once per boot and a
    second one is still reported."""

    pattern: str
    times: int | None = None
    message: str = ""
    why: str = ""

    def matches(self, line: str, around: str) -> bool:
        return bool(re.search(self.pattern, line)) and \
            (not self.message or re.search(self.message, around) is not None)


# pybpfmap's own negative control (``pybpfmap stress --inject splat``, and the
# tests built on it) writes this fake WARN into the kernel log on purpose: the
# command's own splat check must report it (that is the control), while a run
# in the test VM is not failed for it.
NEGATIVE_CONTROL_TAG = "pybpfmap-negative-control"
NEGATIVE_CONTROL = Allowed(rf"at {NEGATIVE_CONTROL_TAG}: injected by",
                           why="pybpfmap's own negative control, written on purpose")


def negative_control_line(pid: int) -> str:
    """The fake WARN line of :data:`NEGATIVE_CONTROL` for process ``pid``."""
    return (f"WARNING: CPU: 0 PID: {pid} at {NEGATIVE_CONTROL_TAG}: injected by "
            "`pybpfmap stress --inject splat`, not a real kernel problem")


def _kind(line: str, deny: list[tuple[str, re.Pattern]]) -> str | None:
    for kind, pat in deny:
        if pat.search(line):
            return kind
    return None


def _report_end(lines: list[str], i: int, deny: list[tuple[str, re.Pattern]],
                context: int) -> int:
    """Index just past the report that starts at ``lines[i]``."""
    j = i + 1
    t0 = _stamp(lines[i])
    while j < len(lines) and j - i <= context:
        t = _stamp(lines[j])
        if t0 is not None and t is not None and t - t0 > REPORT_GAP:
            break
        nxt = _TIMESTAMP.sub("", lines[j])
        if _END.search(nxt):
            return j + 1
        if _kind(nxt, deny):
            break
        j += 1
    return j


def classify(dmesg: str, allow: Iterable[str | Allowed] = (), *, context: int = 40
             ) -> tuple[list[Splat], list[Splat]]:
    """(splats, excused): every splat in ``dmesg``, split into those no
    ``ALLOW`` entry or ``allow`` entry excuses and those one does."""
    deny = [(k, re.compile(p)) for k, p in DENY]
    always = [re.compile(p) for p in ALLOW]
    entries = [a if isinstance(a, Allowed) else Allowed(a) for a in allow]
    used = [0] * len(entries)
    lines = dmesg.splitlines()
    found: list[Splat] = []
    excused: list[Splat] = []
    i = 0
    while i < len(lines):
        bare = _TIMESTAMP.sub("", lines[i])
        kind = _kind(bare, deny)
        if kind is None or any(a.search(bare) for a in always):
            i += 1
            continue
        j = _report_end(lines, i, deny, context)
        splat = Splat(kind, i + 1, lines[i], "\n".join(lines[i:j]))
        around = "\n".join(_TIMESTAMP.sub("", x) for x in lines[max(0, i - 2):j])
        hit = next((n for n, a in enumerate(entries)
                    if a.matches(bare, around) and (a.times is None or used[n] < a.times)),
                   None)
        if hit is None:
            found.append(splat)
        else:
            used[hit] += 1
            excused.append(splat)
        i = j
    return found, excused


def find_splats(dmesg: str, allow: Iterable[str | Allowed] = (), *,
                context: int = 40) -> list[Splat]:
    """Every splat in ``dmesg`` that no ``ALLOW`` or ``allow`` entry excuses.

    ``text`` holds the splat line and up to ``context`` lines of its report
    (until ``---[ end trace``, the next splat line, or a line stamped more than
    ``REPORT_GAP`` seconds later).  Timestamps are kept.
    """
    return classify(dmesg, allow, context=context)[0]


def format_splats(splats: list[Splat], *, max_lines: int = 20) -> str:
    """A human report: each splat's kind, line number and first ``max_lines`` lines."""
    parts = []
    for s in splats:
        body = s.text.splitlines()
        more = f"\n    ... ({len(body) - max_lines} more lines)" if len(body) > max_lines else ""
        shown = "\n".join(f"    {b}" for b in body[:max_lines])
        parts.append(f"{s.kind} at dmesg line {s.lineno}:\n{shown}{more}")
    return "\n".join(parts)
