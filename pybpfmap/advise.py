"""The answer for one map spec on one kernel: preallocate or not, and why.

For one map spec (type, sizes, max_entries, flags) and the program types that
touch it, :func:`measure_here` measures on the running kernel, for both
allocation modes: the map's kernel memory empty, full and at its peak
(:mod:`pybpfmap.footprint`), the update -> lookup -> delete triple in the
kernel (:mod:`pybpfmap.bench`, BPF_PROG_TEST_RUN, one CPU), and whether each
program type loads with the map and what the verifier says
(:mod:`pybpfmap.progtypes`).  The lock paths (the seed's kprobe on
spin_unlock hammering the map, and a nested update under the bucket lock)
are the stress scenarios: :func:`add_lock_paths` takes their rows (run by the
host in the same kernel's test VM) or, for a measurement the user skipped,
the era's prediction marked "predicted, not run".  :func:`decide` turns all
of it into a recommendation with its reasons; an :class:`Advice` is unsafe
when the mode the spec asks for is refused for one of its program types or
may lock the kernel up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pybpfmap import footprint, kfacts, progtypes
from pybpfmap.era import Expect, era_of
from pybpfmap.errors import KernelError, errno_name
from pybpfmap.maps import MapSpec, alloc_label
from pybpfmap.output import human_bytes, human_ns, text_table
from pybpfmap.records import from_json

MEASUREMENTS = ("memory", "speed", "loads", "stress")
LOCK_SCENARIOS = ("allocator", "reentry")
LOCK_WHAT = {
    "allocator": "kprobes on spin_unlock paths updating the map (the seed's case)",
    "reentry": "a kprobe program updating the map while its CPU holds the map's bucket lock",
}
PREDICTED = "predicted, not run"
EXIT_SAFE, EXIT_UNSAFE = 0, 3
BENCH_RUNS = 3


@dataclass
class LockPath:
    """One lock-path scenario on one allocation mode: what happened, or what the era predicts."""

    scenario: str
    outcome: str                 # a stress verdict (PASS, FAIL, DEADLOCK, ...) or an Expect name
    measured: bool
    errors: dict[str, int] = field(default_factory=dict)   # errno name -> count (measured)
    said: str = ""               # the row's reasons, or the prediction and its commits
    expected_errnos: list[str] = field(default_factory=list)  # predicted: the errnos counted

    def brief(self) -> str:
        if self.measured:
            errs = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
            return f"{self.scenario} {self.outcome}" + (f" ({errs})" if errs else "")
        what = (" or ".join(self.expected_errnos) if self.expected_errnos
                else self.outcome)
        return f"{self.scenario} {what} (predicted)"

    @property
    def locks_up(self) -> bool:
        return self.outcome in ("DEADLOCK", Expect.DEADLOCK.name, Expect.MAY_DEADLOCK.name)


@dataclass
class ModeAnswer:
    """One allocation mode of the spec, measured on one kernel."""

    prealloc: bool
    refused: str | None = None          # creation refused: "ENOTSUPP (524): ..."
    memory_empty: int | None = None
    memory_full: int | None = None
    memory_peak: int | None = None
    memory_how: str = ""
    ns_per_triple: float | None = None  # median of BENCH_RUNS in-kernel runs
    ns_spread: tuple[float, float] | None = None   # their min and max
    speed_how: str = ""
    loads: list[progtypes.LoadResult] = field(default_factory=list)
    lock_paths: list[LockPath] = field(default_factory=list)

    @property
    def label(self) -> str:
        return alloc_label(self.prealloc)

    def refused_progs(self) -> list[str]:
        return [r.prog for r in self.loads if not r.loaded]


@dataclass
class Advice:
    """The answer for one spec on one kernel."""

    kernel_release: str
    where: str
    era: str
    type: str
    key_size: int
    value_size: int
    max_entries: int
    prealloc: bool                  # the mode the spec asks for
    progs: list[str]
    modes: list[ModeAnswer] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # measurements not made (predicted)
    recommendation: str = ""        # prealloc, no_prealloc
    unsafe: bool = False            # the spec's own mode is refused or may lock up here
    reasons: list[str] = field(default_factory=list)

    def mode(self, prealloc: bool) -> ModeAnswer | None:
        return next((m for m in self.modes if m.prealloc is prealloc), None)

    def spec(self, prealloc: bool | None = None) -> MapSpec:
        return MapSpec(self.type, self.prealloc if prealloc is None else prealloc,
                       self.key_size, self.value_size, self.max_entries)


def load(data: list) -> list[Advice]:
    return [from_json(Advice, r) for r in data]


def modes_of(spec: MapSpec) -> list[bool]:
    """The allocation modes to compare: both, except for LRU maps (preallocated only)."""
    return [True] if spec.lru else [True, False]


def measure_here(spec: MapSpec, progs: list[str], skip: list[str], where: str,
                 step=lambda label: None) -> Advice:
    """Every measurement not in ``skip`` for both modes of ``spec`` on this kernel."""
    release = os.uname().release
    facts = kfacts.probe(release)
    adv = Advice(release, where, era_of(facts).name, spec.type, spec.key_size,
                 spec.value_size, spec.max_entries, spec.prealloc, list(progs),
                 skipped=[m for m in MEASUREMENTS if m in skip])
    for prealloc in modes_of(spec):
        mspec = adv.spec(prealloc)
        ans = ModeAnswer(prealloc)
        adv.modes.append(ans)
        try:
            mspec.preflight()
        except KernelError as e:
            ans.refused = f"{errno_name(e.err)}: {e.meaning}" if e.err else e.meaning
            continue
        if "memory" not in skip:
            step(f"{mspec.label} memory")
            rec = footprint.measure(mspec, where, release)
            ans.memory_empty = rec.memory["empty"].kernel
            ans.memory_full = rec.memory["full"].kernel
            ans.memory_peak = rec.memory["drained"].peak
            ans.memory_how = rec.method
        if "speed" not in skip:
            step(f"{mspec.label} speed")
            _speed(ans, mspec)
        if "loads" not in skip:
            step(f"{mspec.label} program loads")
            ans.loads = progtypes.check(mspec, progs)
    add_lock_paths(adv, [], facts)
    return adv


def _speed(ans: ModeAnswer, spec: MapSpec) -> None:
    from pybpfmap.bench.options import Options
    from pybpfmap.bench.record import Mode
    from pybpfmap.bench.run import run

    (rec,) = run(Options(modes=(Mode.INKERNEL,), types=(spec.type,), prealloc=(spec.prealloc,),
                         max_entries=(spec.max_entries,), runs=BENCH_RUNS, seconds=0.2,
                         key_size=spec.key_size, value_size=spec.value_size))
    if rec.ns_per_triple is not None:
        s = rec.ns_per_triple
        ans.ns_per_triple, ans.ns_spread = s.median, (s.min, s.max)
        ans.speed_how = (f"in-kernel triple (BPF_PROG_TEST_RUN), 1 CPU, median of "
                         f"{len(s.values)} runs")


def add_lock_paths(adv: Advice, rows: list, facts: kfacts.KernelFacts | None = None) -> None:
    """The lock-path outcome of each mode: the stress rows measured for it, else
    the era's prediction marked :data:`PREDICTED`."""
    from pybpfmap.stress.scenarios import SCENARIOS

    facts = facts or kfacts.for_release(adv.kernel_release)
    for ans in adv.modes:
        ans.lock_paths = []
        if ans.refused:
            continue
        for name in LOCK_SCENARIOS:
            row = next((r for r in rows if r.scenario == name and r.prealloc is ans.prealloc),
                       None)
            if row is not None:
                errors: dict[str, int] = {}
                for per_op in row.errors.values():
                    for err, n in per_op.items():
                        errors[err] = errors.get(err, 0) + n
                ans.lock_paths.append(LockPath(name, row.outcome, True, errors,
                                               "; ".join(row.reasons)))
                continue
            p = SCENARIOS[name].predict(facts, adv.spec(ans.prealloc))
            why = f"{PREDICTED}: {p.describe()}; {p.why}"
            if p.changes:
                why += f" ({'; '.join(p.changes)})"
            ans.lock_paths.append(LockPath(name, p.expect.name, False, said=why,
                                           expected_errnos=[errno_name(e) for e in p.errnos]))


def _problems(ans: ModeAnswer) -> list[str]:
    """Why a mode is unsafe here (empty: safe)."""
    why = []
    if ans.refused:
        why.append(f"the kernel refuses to create it ({ans.refused})")
    refused = ans.refused_progs()
    if refused:
        why.append(f"the verifier refuses it to {', '.join(refused)} programs")
    for lp in ans.lock_paths:
        if lp.locks_up:
            how = "measured" if lp.measured else "predicted"
            why.append(f"{LOCK_WHAT.get(lp.scenario, lp.scenario)}: {lp.outcome} ({how})")
    return why


def decide(adv: Advice) -> None:
    """The recommendation, its reasons, and whether the spec's own mode is unsafe here."""
    reasons: list[str] = []
    problems = {ans.prealloc: _problems(ans) for ans in adv.modes}
    for ans in adv.modes:
        if problems[ans.prealloc]:
            reasons.append(f"{ans.label}: unsafe here: {'; '.join(problems[ans.prealloc])}")
        warned = [r for r in ans.loads if r.loaded and r.said]
        if warned:
            reasons.append(f"{ans.label}: the verifier warns for "
                           f"{', '.join(r.prog for r in warned)}: {warned[0].said}")
        errs = sorted({e for lp in ans.lock_paths for e in lp.errors}
                      | {e for lp in ans.lock_paths for e in lp.expected_errnos})
        if errs:
            how = "measured" if any(lp.errors for lp in ans.lock_paths) else "predicted"
            reasons.append(f"{ans.label}: updates from a lock path fail with "
                           f"{', '.join(errs)} ({how}; the program must handle it)")
    pre, lazy = adv.mode(True), adv.mode(False)
    if pre and lazy and pre.memory_empty is not None and lazy.memory_empty is not None:
        saved = pre.memory_empty - lazy.memory_empty
        extra = (lazy.memory_full or 0) - (pre.memory_full or 0)
        reasons.append(f"NO_PREALLOC saves {human_bytes(saved)} while empty "
                       f"({human_bytes(pre.memory_empty)} -> {human_bytes(lazy.memory_empty)}) "
                       f"and costs {human_bytes(extra)} more when full")
    if pre and lazy and pre.ns_per_triple and lazy.ns_per_triple:
        reasons.append(f"the triple takes {human_ns(pre.ns_per_triple)} preallocated, "
                       f"{human_ns(lazy.ns_per_triple)} NO_PREALLOC "
                       f"({lazy.ns_per_triple / pre.ns_per_triple:.2f}x)")
    safe = [p for p, why in problems.items() if not why]
    cheap = bool(pre and lazy and pre.memory_empty and lazy.memory_empty is not None
                 and lazy.memory_empty < pre.memory_empty / 4
                 and (not (pre.ns_per_triple and lazy.ns_per_triple)
                      or lazy.ns_per_triple < 1.5 * pre.ns_per_triple))
    if safe == [False] or (False in safe and cheap):
        adv.recommendation = "no_prealloc"
        first = ("NO_PREALLOC: safe here, saves most of the memory of a mostly empty map and "
                 "costs little speed" if True in safe else "NO_PREALLOC: the only safe mode")
    elif True in safe:
        adv.recommendation = "prealloc"
        first = "preallocate: safe here with these programs" + (
            "" if False in safe or not lazy else "; NO_PREALLOC is not (below)")
    else:
        # Neither is safe: prefer the mode whose problems the other one has too.
        own = {p: [w for w in why if w not in problems.get(not p, [])]
               for p, why in problems.items()}
        best = min(problems, key=lambda p: (len(own[p]), not p))
        adv.recommendation = alloc_label(best)
        first = (f"neither mode is safe here with these programs; {alloc_label(best)} has "
                 "no problem the other lacks" if not own[best] else
                 f"neither mode is safe here; {alloc_label(best)} has fewer problems")
    reasons.insert(0, first)
    adv.unsafe = bool(problems.get(adv.prealloc, ["not measured"]))
    adv.reasons = reasons


def exit_status(advice: list[Advice]) -> int:
    return EXIT_UNSAFE if any(a.unsafe for a in advice) else EXIT_SAFE


def render_text(advice: list[Advice]) -> str:
    out = []
    for a in advice:
        head = (f"{a.where} (kernel {a.kernel_release}, era {a.era}): "
                f"{a.type} key {a.key_size} value {a.value_size} max_entries {a.max_entries}; "
                f"programs {', '.join(a.progs)}")
        out.append(head)
        rows = []
        for m in a.modes:
            if m.refused:
                rows.append([m.label, f"refused: {m.refused}"])
                continue
            rows.append([m.label, human_bytes(m.memory_empty), human_bytes(m.memory_full),
                         human_bytes(m.memory_peak),
                         human_ns(m.ns_per_triple) if m.ns_per_triple else None,
                         ", ".join(f"{r.prog} {'ok' if r.loaded else r.errno}"
                                   + (" (warns)" if r.loaded and r.said else "")
                                   for r in m.loads) or None,
                         "; ".join(lp.brief() for lp in m.lock_paths)])
        out.append(text_table(["alloc", "empty", "full", "peak", "triple", "program loads",
                               "lock paths"], rows).rstrip("\n"))
        verdict = "UNSAFE" if a.unsafe else "safe"
        out.append(f"  spec as asked ({alloc_label(a.prealloc)}): {verdict}; "
                   f"recommendation: {a.recommendation}")
        out += [f"  - {r}" for r in a.reasons]
        if a.skipped:
            out.append(f"  not measured ({PREDICTED} where it matters): {', '.join(a.skipped)}")
        out.append("")
    return "\n".join(out) + "\n"
