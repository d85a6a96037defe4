"""``pybpfmap stress --kernel K``: the rows in the test VM, one boot per row.

Each (scenario, map kind) row runs in its own boot (``--isolate``, the
default), as ``pybpfmap stress --scenario S --types KIND ...`` through the
relay (:mod:`pybpfmap.vm.relay`), so a lockup voids only its own row.  A
boot that brings its result back gives its row (plus any splat the runner
found in the guest's whole dmesg that the era does not explain); a boot that
hung is the row's DEADLOCK, with the runner's vCPU evidence and, from the
guest's progress marks on the control port, how long after the first attach its
CPU stopped.  ``--no-isolate`` runs every row in one boot: a hang then makes
the row that was running a DEADLOCK and voids the rest.  ``--isolate-risky``
(``isolate=None``) gives each row the era predicts may deadlock its own boot
and runs the others together in one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pybpfmap import era
from pybpfmap.guest import Mark, marks
from pybpfmap.kfacts import KernelFacts
from pybpfmap.stress import verdict
from pybpfmap.stress.kinds import MapKind
from pybpfmap.stress.records import FAIL, SKIPPED, StressRow, StressRun, load
from pybpfmap.stress.run import Options
from pybpfmap.stress.scenarios import Scenario
from pybpfmap.vm.build import ensure_image
from pybpfmap.vm.catalog import CatalogKernel
from pybpfmap.vm.relay import GuestRun, run_command

HANG_TIMEOUT = 30.0   # a CPU without heartbeat for this long is stuck (TCG included)
BOOT_AND_LOAD = 420.0  # boot plus BCC compiles under TCG, generously


def _runs_of(run: GuestRun) -> list[StressRun]:
    return load(run.data) if run.data is not None else []


def _armed(progress: list[Mark]) -> dict[str, float]:
    """Row label -> guest uptime of its first attach, from the progress marks."""
    out: dict[str, float] = {}
    for m in progress:
        if m.event == "armed" and len(m.args) >= 2:
            out.setdefault(" ".join(m.args[:2]), m.uptime)
    return out


def _started(progress: list[Mark]) -> list[str]:
    return [" ".join(m.args[:2]) for m in progress if m.event == "row-start"]


def _placeholder(scenario: Scenario, kind: MapKind, opts: Options) -> StressRow:
    return StressRow(scenario.name, kind.name, kind.spec.type, kind.spec.prealloc,
                     kind.spec.value_size, opts.variant.name, "", note=kind.note)


def _one_boot(kernel: CatalogKernel, groups: list[tuple[Scenario, MapKind]], opts: Options,
              argv: list[str], folder: Path, release: str, assumed: KernelFacts
              ) -> tuple[list[StressRow], dict[str, str], KernelFacts | None]:
    """The rows of one boot, the probes the guest could not attach (and why),
    and the era facts the guest recorded (None: it brought none back).
    ``argv`` is the command line without the options the host decides per boot."""
    scenarios = list(dict.fromkeys(s.name for s, _ in groups))
    kinds = list(dict.fromkeys(k.name for _, k in groups))
    guest_argv = [*argv, "--scenario", *scenarios, "--types", *kinds]
    per_row = opts.duration + opts.baseline_seconds() * 2 + 60
    allowed = era.expected_splats(assumed, [k.spec for _, k in groups])
    run = run_command(kernel, guest_argv, results_dir=folder,
                      timeout=BOOT_AND_LOAD + per_row * len(groups),
                      hang_timeout=HANG_TIMEOUT, allow_splats=tuple(allowed))
    guest = _runs_of(run)
    recorded = next((KernelFacts.from_records(release, kernel.preempt_rt, g.facts,
                                              assumed.stable)
                     for g in guest if g.facts), None)
    facts = recorded or assumed   # what the guest probed, where it said
    got = {r.label: r for g in guest for r in g.rows}
    unavailable = {p: why for g in guest for p, why in g.unavailable.items()}
    ctl = run.vm.ctl_path.read_text(errors="replace") if run.vm.ctl_path.exists() else ""
    progress = marks(ctl)
    armed, started = _armed(progress), _started(progress)
    rows = []
    for scenario, kind in groups:
        label = f"{scenario.name} {kind.name}"
        row = got.get(label)
        running = label == (started[-1] if started else None) or len(groups) == 1
        if row is not None:
            verdict.merge_vm_splats(row, run.vm, facts)
        elif not run.vm.outcome.finished and running:
            row = verdict.from_vm(_placeholder(scenario, kind, opts), run.vm,
                                  armed.get(label), facts)
        else:
            row = _placeholder(scenario, kind, opts)
            if run.vm.outcome.finished:
                row.outcome, row.reasons = FAIL, [f"the guest gave no result for this row: "
                                                  f"{run.problem or run.vm.message}"]
            elif label in started:
                row.outcome, row.reasons = FAIL, [f"voided: the boot ended ({run.vm.message}) "
                                                  "before it printed this row"]
            else:
                row.outcome, row.reasons = SKIPPED, [f"not run: the boot ended "
                                                     f"({run.vm.message}) before this row"]
            row.vm = verdict.vm_summary(run.vm)
            verdict.predict(row, facts)
        rows.append(row)
    return rows, unavailable, recorded


def batches_of(groups: list[tuple[Scenario, MapKind]], isolate: bool | None,
               facts: KernelFacts) -> list[list[tuple[Scenario, MapKind]]]:
    """The boots for these rows: one each (True), one for all (False), or
    (None) one each for the rows the era predicts may lock up, one for the rest."""
    if isolate is not None:
        return [[g] for g in groups] if isolate else [groups]
    risky = [g for g in groups if g[0].may_deadlock(facts, [g[1].spec])]
    rest = [g for g in groups if g not in risky]
    return [[g] for g in risky] + ([rest] if rest else [])


def run_in_vm(opts: Options, kernel: CatalogKernel, argv: list[str], isolate: bool | None,
              base: Path) -> StressRun:
    """Every row of ``opts`` in ``kernel``'s test VM, the results under ``base``;
    ``argv``: the command line the user typed, without its host-only options."""
    image = ensure_image(kernel)
    groups = [(s, k) for s in opts.scenarios for k in opts.kinds]
    assumed = image.assumed_facts(kernel.preempt_rt)   # not booted yet: its banner and release
    batches = batches_of(groups, isolate, assumed)
    rows: list[StressRow] = []
    unavailable: dict[str, str] = {}
    recorded: KernelFacts | None = None
    for n, batch in enumerate(batches, 1):
        names = ", ".join(f"{s.name} {k.name}" for s, k in batch)
        print(f"pybpfmap stress: [{n}/{len(batches)}] {kernel.name}: {names}",
              file=sys.stderr, flush=True)
        folder = base / (f"{batch[0][0].name}-{batch[0][1].name.replace('/', '-')}"
                         if len(batch) == 1 else "all" if isolate is False else "rest")
        got, why, facts = _one_boot(kernel, batch, opts, argv, folder, image.release,
                                    assumed)
        recorded = recorded or facts
        rows += got
        unavailable.update(why)
        last = rows[-1]
        print(f"pybpfmap stress: [{n}/{len(batches)}] {names}: {last.outcome}"
              + (f" after {last.seconds} s" if last.seconds is not None else ""),
              file=sys.stderr, flush=True)
    accel = next((r.vm.accel for r in rows if r.vm), None)
    # The guest's probed facts when a boot brought them back, else the version's.
    facts = recorded or assumed
    return StressRun(image.release, f"vm:{kernel.name}", era.era_of(facts).name,
                     opts.duration, isolate, era.expectations(facts), rows,
                     unavailable, inject=opts.inject and opts.inject.name, accel=accel,
                     note=opts.variant.weaker_note, facts=facts.records())
