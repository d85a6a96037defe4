"""A merged report's sections: grouped by machine, pooled only within one.

A group is one section (``bench@host``, ``stress-allocator@bookworm``...) on
one :class:`~pybpfmap.report.machine.Machine`.  Repeat runs of one machine
fall into one group and pool; the same section from another machine is
another group, rendered apart and labelled: absolute figures (ns per triple,
events/s, seconds) of two machines are never averaged.  A section without a
machine (an older ``results.json``) is a group of its own run.

Pooling (:func:`pool`): bench records of the same measurement (mode, map,
size, CPUs, fill, key, trigger) combine their samples: each :class:`Spread`
is rebuilt from the runs of every part (``Spread.of`` over the concatenated
``values``: median, min, max and CV over all runs, as
:func:`pybpfmap.stats.summarise` does for one run's), the figures derived from
a spread are derived again (triples/s = 1e9 / the pooled median, the clocks'
agreement, map_perf_test's ratio), scalar figures that are already medians
over one part's runs (gross ns per run, burst percentiles, total events/s)
become the median of the parts' figures counted once per run, and the
verification counts add up (a part that failed its checks flags the pooled
record).  The other commands' records (info, maps, stress rows, bcc-compare
tools) are kept side by side, an identical record once.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from pybpfmap.bench.record import (
    BenchRecord,
    Mode,
    PeerFigure,
    Spread,
    Verification,
    agree,
    within,
)
from pybpfmap.records import to_json
from pybpfmap.report.machine import Machine
from pybpfmap.report.run import SectionResult

Identity = tuple[Machine | None, str]   # the machine; or (None, its run) when unknown


def identity(s: SectionResult) -> Identity:
    """Which machine ran ``s``: sections of one identity are runs of one machine."""
    return (s.machine, "") if s.machine is not None else (None, s.run)


@dataclass(frozen=True)
class Group:
    """One section on one machine: one part's, or several repeat runs' to pool."""

    key: str
    name: str
    where: str
    machine: Identity
    sections: tuple[SectionResult, ...]


def groups(sections: list[SectionResult]) -> list[Group]:
    """Sections grouped by (key, machine): keys in order of first mention, each
    key's machines in order of first mention."""
    by: dict[str, dict[Identity, list[SectionResult]]] = {}
    for s in sections:
        by.setdefault(s.key, {}).setdefault(identity(s), []).append(s)
    return [Group(key, ss[0].name, ss[0].where, ident, tuple(ss))
            for key, machines in by.items() for ident, ss in machines.items()]


def not_averaged(grouped: list[Group]) -> dict[str, list[Group]]:
    """The sections measured on more than one machine (shown per machine)."""
    by: dict[str, list[Group]] = {}
    for g in grouped:
        by.setdefault(g.key, []).append(g)
    return {k: gs for k, gs in by.items() if len(gs) > 1}


class Labels:
    """Short machine labels for a report: ``M1``, ``M2``... one per host (CPU
    model, cores, host kernel) in order of first mention, with the guest's
    accelerator (``M1, tcg``); ``unknown machine (<run>)`` without a record."""

    def __init__(self, sections: list[SectionResult]) -> None:
        self.hosts: dict[tuple, Machine] = {}
        self.unknown: list[str] = []
        places: dict[str, set[Identity]] = {}
        for s in sections:
            if s.machine is not None:
                self.hosts.setdefault(s.machine.hardware, s.machine)
            elif s.run not in self.unknown:
                self.unknown.append(s.run)
            places.setdefault(s.where, set()).add(identity(s))
        # Labels are needed for more than one host, or one place measured two ways
        # (one host with KVM and with TCG).
        self.many = (len(self.hosts) + len(self.unknown) > 1
                     or any(len(idents) > 1 for idents in places.values()))

    def number(self, m: Machine) -> str:
        return f"M{list(self.hosts).index(m.hardware) + 1}"

    def __call__(self, ident: Identity) -> str:
        m, run = ident
        if m is None:
            return f"unknown machine ({run or 'no run recorded'})"
        return self.number(m) + (f", {m.accel}" if m.accel else "")


def pool(name: str, record_lists: list[list]) -> list:
    """The records of repeat runs of one machine as one list (see the module's doc)."""
    if name == "bench":
        return pool_bench(record_lists)
    out, seen = [], set()
    for records in record_lists:
        for r in records:
            text = json.dumps(to_json(r), sort_keys=True)
            if text not in seen:
                seen.add(text)
                out.append(r)
    return out


def _measurement(r: BenchRecord) -> tuple:
    return (r.mode, r.type, r.prealloc, r.max_entries, r.cpus, r.fill_percent, r.key,
            r.key_size, r.value_size, r.triples_per_event, r.trigger)


def pool_bench(record_lists: list[list[BenchRecord]]) -> list[BenchRecord]:
    """Bench records of several runs of one machine, one per measurement."""
    by: dict[tuple, list[BenchRecord]] = {}
    for records in record_lists:
        for r in records:
            by.setdefault(_measurement(r), []).append(r)
    return [rs[0] if len(rs) == 1 else _pool_records(rs) for rs in by.values()]


def _spread(rs: list, get: Callable, digits: int = 2) -> Spread | None:
    spreads = [get(r) for r in rs]
    if any(s is None for s in spreads):
        return None
    return Spread.of([v for s in spreads for v in s.values], digits)


def _scalar(rs: list[BenchRecord], get: Callable, digits: int | None) -> float | None:
    """The median of the parts' figures, each counted once per run it summarises."""
    values = [get(r) for r in rs]
    if any(v is None for v in values):
        return None
    m = statistics.median(v for r, v in zip(rs, values, strict=True) for _ in range(r.runs or 1))
    return round(m, digits) if digits else round(m)


def _verification(rs: list[BenchRecord]) -> Verification | None:
    vs = [r.verification for r in rs]
    if any(v is None for v in vs):
        return None
    failures: dict[str, dict[str, int]] = {}
    for v in vs:
        for op, errnos in v.failures.items():
            for errno, n in errnos.items():
                failures.setdefault(op, {})[errno] = failures.get(op, {}).get(errno, 0) + n
    misses = [v.recursion_misses for v in vs]
    return Verification(
        sum(v.events for v in vs), sum(v.triggers for v in vs),
        sum(v.difference for v in vs), sum(v.elsewhere for v in vs), failures,
        None if any(m is None for m in misses) else sum(misses),  # type: ignore[misc]
        vs[0].recursion_misses_note, list(dict.fromkeys(p for v in vs for p in v.problems)))


def _peer(rs: list[BenchRecord], events: Spread | None) -> PeerFigure | None:
    peers = [r.peer for r in rs]
    if any(p is None for p in peers):
        return None
    rate = _spread(peers, lambda p: p.events_per_sec, 0)
    ratio = events.median / rate.median if events and rate and rate.median else None
    return dataclasses.replace(peers[0], events_per_sec=rate,
                               ratio=None if ratio is None else round(ratio, 3),
                               within=within(ratio))


def _pool_records(rs: list[BenchRecord]) -> BenchRecord:
    first = rs[0]
    if first.refused is not None:
        return first
    ns = _spread(rs, lambda r: r.ns_per_triple)
    stats = _spread(rs, lambda r: r.ns_per_triple_bpf_stats)
    events = _spread(rs, lambda r: r.events_per_sec, 0)
    inkernel = first.mode is Mode.INKERNEL
    return dataclasses.replace(
        first, runs=sum(r.runs for r in rs), ns_per_triple=ns, ns_per_triple_bpf_stats=stats,
        ns_per_triple_wall=_spread(rs, lambda r: r.ns_per_triple_wall),
        ns_per_triple_median_call=_spread(rs, lambda r: r.ns_per_triple_median_call),
        clocks_agree=agree(ns, stats) if inkernel else first.clocks_agree,
        triple_run_ns=_scalar(rs, lambda r: r.triple_run_ns, 2),
        empty_run_ns=_scalar(rs, lambda r: r.empty_run_ns, 2),
        triples_per_sec_per_cpu=(round(1e9 / ns.median) if inkernel and ns and ns.median > 0
                                 else None),
        events_per_sec=events,
        events_per_sec_burst=_spread(rs, lambda r: r.events_per_sec_burst, 0),
        burst_p10=_scalar(rs, lambda r: r.burst_p10, None),
        burst_p90=_scalar(rs, lambda r: r.burst_p90, None),
        events_per_sec_total=_scalar(rs, lambda r: r.events_per_sec_total, None),
        empty_events_per_sec=_spread(rs, lambda r: r.empty_events_per_sec, 0),
        prog_ns_per_event=_scalar(rs, lambda r: r.prog_ns_per_event, 2),
        verification=_verification(rs), peer=_peer(rs, events),
        notes=[*dict.fromkeys(n for r in rs for n in r.notes),
               f"pooled: the samples of {len(rs)} runs of one machine "
               f"({' + '.join(str(r.runs) for r in rs)} runs)"])
