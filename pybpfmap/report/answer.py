"""The report's first sections: the answer per kernel, and the seed's claims checked.

Both are composed from the records of one place (a kernel measured on one
machine), never from predictions: a cell with no measurement says so.

- :func:`answer`: per kernel, which map kinds are safe from lock paths (the
  stress rows that passed), which fail with which errno, which deadlock (with
  the stuck CPU's evidence), and what BPF_F_NO_PREALLOC saves (memory of the
  empty map) and costs (the triple's time, and memory when full).
- :func:`claims`: the claims of Linux kernel commit 6c9059817432 ("bpf:
  pre-allocate hash map elements") (in v4.6), each with the measurement that
  shows whether it still holds on that kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pybpfmap import commits
from pybpfmap.bench.record import Mode, pre_no_ratio
from pybpfmap.output import human_bytes, md_table


@dataclass
class Place:
    """One kernel measured on one machine, with its records by command."""

    where: str
    release: str | None
    era: str | None
    info: list = field(default_factory=list)
    maps: list = field(default_factory=list)
    from_bpf: list = field(default_factory=list)
    bench: list = field(default_factory=list)
    stress: list = field(default_factory=list)


def _rows(p: Place, scenarios: tuple[str, ...] = ("allocator", "reentry")) -> list:
    return [r for run in p.stress for r in run.rows if r.scenario in scenarios]


def _map(p: Place, type_: str, prealloc: bool):
    return next((m for m in p.maps if m.type == type_ and m.prealloc is prealloc
                 and not m.skipped), None)


def _mem(rec, stage: str) -> int | None:
    m = rec.memory.get(stage) if rec else None
    return m.kernel if m else None


def _ratio(p: Place, type_: str) -> float | None:
    for mode in (Mode.INKERNEL, Mode.SYSCALL):
        cpus = sorted({r.cpus for r in p.bench if r.cpus})
        if cpus:
            r = pre_no_ratio(p.bench, mode=mode, type=type_, cpus=cpus[0],
                             max_entries=min(r.max_entries for r in p.bench))
            if r:
                return r
    return None


def answer(places: list[Place]) -> str:
    rows = []
    for p in places:
        stress = _rows(p)
        safe = sorted({f"{r.kind} ({r.scenario})" for r in stress if r.outcome == "PASS"
                       and not any(r.errors.values())})
        fails = sorted({f"{r.kind} ({r.scenario}): "
                        + ", ".join(sorted({e for errs in r.errors.values() for e in errs}))
                        for r in stress if r.outcome == "PASS" and any(r.errors.values())})
        locked = sorted({f"{r.kind} ({r.scenario})" + (f": {r.evidence.brief()}"
                                                       if r.evidence else "")
                         for r in stress if r.outcome == "DEADLOCK"})
        other = sorted({f"{r.kind} ({r.scenario}): {r.outcome}" for r in stress
                        if r.outcome not in ("PASS", "DEADLOCK")})
        pre, lazy = _map(p, "hash", True), _map(p, "hash", False)
        saves = costs = None
        if _mem(pre, "empty") is not None and _mem(lazy, "empty") is not None:
            saves = (f"{human_bytes(_mem(pre, 'empty') - _mem(lazy, 'empty'))} of "
                     f"{human_bytes(_mem(pre, 'empty'))} empty")
            if _mem(lazy, "full") is not None and _mem(pre, "full") is not None:
                extra = _mem(lazy, "full") - _mem(pre, "full")
                costs = (f"{human_bytes(extra)} more when full" if extra >= 0
                         else f"{human_bytes(-extra)} less when full")
        ratio = _ratio(p, "hash")
        if ratio:
            costs = (costs + "; " if costs else "") + f"triple {ratio:.2f}x (pre ÷ no)"
        rows.append([p.where, p.release, p.era, "; ".join(safe) or "none measured",
                     "; ".join(fails) or "none", "; ".join(locked + other) or "none",
                     saves, costs])
    return md_table(["where", "kernel", "era", "safe from lock paths", "fail with errno",
                     "deadlock (or other)", "NO_PREALLOC saves (hash)",
                     "NO_PREALLOC costs (hash)"], rows) + (
        "\nFrom this report's stress rows (allocator: kprobes on spin_unlock paths hammering "
        "the map; reentry: a nested update under the bucket lock), maps (kernel memory, the "
        "same max_entries everywhere) and bench (the in-kernel triple, fewest CPUs). A "
        "deadlock names the stuck CPU's lock and stack.\n")


def _claim_deadlock(p: Place) -> str:
    rows = [r for r in _rows(p, ("allocator",)) if not r.prealloc]
    if not rows:
        return "not measured"
    locked = [r for r in rows if r.outcome == "DEADLOCK"]
    if locked:
        r = locked[0]
        return (f"holds: {r.kind} DEADLOCK" + (f" ({r.evidence.brief()})" if r.evidence else ""))
    weaker = " (the weaker tracepoint variant)" if rows[0].variant_kind.weaker else ""
    return (f"not seen: {', '.join(f'{r.kind} {r.outcome}' for r in rows)}"
            f" in {max((r.seconds or 0) for r in rows):g} s{weaker}")


def _claim_atomic(p: Place) -> str:
    lazy = next((r for r in p.from_bpf if r.type == "percpu_hash" and not r.prealloc
                 and r.fill), None)
    pre = next((r for r in p.from_bpf if r.type == "percpu_hash" and r.prealloc and r.fill),
               None)
    if lazy is None:
        return "not measured"
    f = lazy.fill
    enomem = f.errors.get("ENOMEM", 0)
    base = (f"ENOMEM {enomem} of {f.attempts} updates from a tracing program, MemFree "
            f"{human_bytes(f.mem_free)}"
            + (f", {f.pcpu_alloc_failures} failed per-CPU allocations"
               if f.pcpu_alloc_failures else "")
            + (f"; preallocated: ENOMEM {pre.fill.errors.get('ENOMEM', 0)}" if pre else ""))
    return ("holds: " if enomem else "not seen: ") + base


def _claim_speed(p: Place) -> str:
    parts = [(t, _ratio(p, t)) for t in ("hash", "percpu_hash")]
    parts = [(t, r) for t, r in parts if r]
    if not parts:
        return "not measured"
    holds = all(r > 1.05 for _, r in parts)
    text = ", ".join(f"{t} {r:.2f}x" for t, r in parts)
    return ("holds: " if holds else "no longer: " if all(r < 1.05 for _, r in parts)
            else "mixed: ") + f"prealloc ÷ NO_PREALLOC speed {text}"


def _claim_upfront(p: Place) -> str:
    pre, lazy = _map(p, "hash", True), _map(p, "hash", False)
    if _mem(pre, "empty") is None or _mem(lazy, "full") is None:
        return "not measured"
    method = "ledger" if "ledger" in pre.method else "memory cgroup"
    empty, full = _mem(pre, "empty"), _mem(pre, "full") or 0
    same = abs(full - empty) <= 0.02 * max(empty, 1)
    return (("holds" if same else "does not hold") + f": prealloc {human_bytes(empty)} empty "
            f"{'≈' if same else '->'} {human_bytes(full)} full; NO_PREALLOC "
            f"{human_bytes(_mem(lazy, 'empty'))} -> {human_bytes(_mem(lazy, 'full'))} "
            f"({method})")


def _claim_memlock(p: Place) -> str:
    limit = p.info[0].memlock if p.info else None
    if limit is None or limit.charged is None:
        return "not measured"
    if limit.charged:
        return ("holds: map memory is charged to RLIMIT_MEMLOCK at BPF_MAP_CREATE, computed "
                "from max_entries for both modes (probed)")
    return (f"no longer: no RLIMIT_MEMLOCK charge since {commits.NO_RLIMIT.cite()}; the "
            "memory cgroup is charged as the map allocates (probed)")


CLAIMS = (
    ("a kprobe program updating a NO_PREALLOC map from a lock path deadlocks "
     "(kmalloc/alloc_percpu take the lock again)", _claim_deadlock),
    ("alloc_percpu(GFP_ATOMIC) fails while memory is free", _claim_atomic),
    ("update -> lookup -> delete is faster preallocated", _claim_speed),
    ("a preallocated map is charged its whole size at creation", _claim_upfront),
    ("memlock is checked at creation", _claim_memlock),
)


def claims(places: list[Place]) -> str:
    rows = [[claim, *(check(p) for p in places)] for claim, check in CLAIMS]
    return md_table([f"claim of {commits.PREALLOC.commit}",
                     *(f"{p.where} ({p.release})" for p in places)], rows) + (
        f"\nThe claims of {commits.PREALLOC.cite()}, each checked by this report's own "
        "measurement on that kernel: stress allocator rows on NO_PREALLOC maps, maps "
        "--from-bpf on percpu_hash, the bench's prealloc ÷ NO_PREALLOC ratio, maps' kernel "
        "memory, info's RLIMIT_MEMLOCK probe.\n")
