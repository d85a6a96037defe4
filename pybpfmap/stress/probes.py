"""Probe kinds: how a stress program is loaded and attached, and what its
statistics mean.

``kprobe`` (a function's entry, through a tracefs kprobe event),
``tracepoint`` (``category:name``; the weaker variant of the allocator
scenario), ``raw_tp`` (the re-entry scenario's outer program and the NMI
scenarios' lock holder, attached by BCC at load) and ``nmi_tracepoint`` (the
NMI scenarios' program on ``nmi:nmi_handler``).  Records keep the kind's
:attr:`ProbeKind.name` (their JSON values); ``PROBE_KINDS.named()`` gives the object back.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

from pybpfmap import era, kfacts, tracefs
from pybpfmap.loader import load_func
from pybpfmap.registry import Registry


@dataclass(frozen=True)
class ProbeKind:
    """One way of running a program on a kernel event."""

    name: str          # the records' value: kprobe, tracepoint, raw_tp
    bcc_type: str      # the ``bcc.BPF`` program type constant
    # Set for a weaker variant of a scenario (a run's note says what it cannot show).
    weaker_note: str = ""

    @property
    def weaker(self) -> bool:
        return bool(self.weaker_note)

    def prog_type(self) -> int:
        """This kind's BPF program type, as BCC numbers it."""
        from bcc import BPF

        return getattr(BPF, self.bcc_type)

    def load(self, bpf, func: str, what: str) -> int:
        """Load BCC function ``func`` of ``bpf`` as this kind's program; its fd."""
        return load_func(bpf, func, self.prog_type(), what)

    def attach(self, fd: int, target: str, *, group: str, tag: str, events: ExitStack,
               links: ExitStack) -> str | None:
        """Attach program ``fd`` to ``target``: the attachment is undone when
        ``links`` closes, anything it needed (a kprobe event, named ``tag``...
        in ``group``) when ``events`` does.  The kprobe event's name, if one was made."""
        raise TypeError(f"a {self.name} program is attached by BCC when it is loaded")

    def misses_counted(self, release: str) -> bool:
        """Whether ``recursion_misses`` counts this kind's skipped runs on ``release``
        (where bpf_prog_info has the field at all)."""
        return True


class Kprobe(ProbeKind):
    def attach(self, fd: int, target: str, *, group: str, tag: str, events: ExitStack,
               links: ExitStack) -> str | None:
        ev = events.enter_context(tracefs.kprobe_event(
            group, tracefs.unique_event(tag, target), target))
        links.enter_context(tracefs.attached(fd, group, ev.event))
        return ev.event

    def misses_counted(self, release: str) -> bool:
        # Asked where the program runs: the running kernel's facts when it is ``release``.
        return era.kprobe_recursion_misses_counted(kfacts.for_release(release))


class Tracepoint(ProbeKind):
    def attach(self, fd: int, target: str, *, group: str, tag: str, events: ExitStack,
               links: ExitStack) -> str | None:
        category, _, name = target.partition(":")
        links.enter_context(tracefs.attached(fd, category, name))
        return None

    def misses_counted(self, release: str) -> bool:
        # trace_call_bpf() runs tracepoint programs as it runs kprobe programs.
        return era.kprobe_recursion_misses_counted(kfacts.for_release(release))


KPROBE = Kprobe("kprobe", "KPROBE")
TRACEPOINT = Tracepoint("tracepoint", "TRACEPOINT", weaker_note=(
    "WEAKER TRACEPOINT VARIANT: the handler runs on lock:contention_*/kmem:* "
    "tracepoints, not inside spin_unlock, so it never runs with a spinlock's "
    "release in progress; it checks map ops in lock and allocation paths, not "
    "the kprobe-on-spin_unlock deadlock itself"))
RAW_TP = ProbeKind("raw_tp", "RAW_TRACEPOINT")
# The NMI scenarios' program: a tracepoint program on nmi:nmi_handler, in NMI
# context (attached by BCC at load: TRACEPOINT_PROBE).
TRACEPOINT_NMI = Tracepoint("nmi_tracepoint", "TRACEPOINT")


class Xdp(ProbeKind):
    def misses_counted(self, release: str) -> bool:
        return False   # XDP programs have no recursion guard to count


# The NMI scenarios' softirq holder (generic XDP on the veth workload).
XDP = Xdp("xdp", "XDP")
PROBE_KINDS = Registry("kind", (KPROBE, TRACEPOINT, RAW_TP, TRACEPOINT_NMI, XDP))


@dataclass(frozen=True)
class Probe:
    """One attach point: a function (kprobe) or a "category:name" tracepoint."""

    kind: ProbeKind
    target: str
