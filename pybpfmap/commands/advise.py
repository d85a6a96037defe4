"""``pybpfmap advise``: preallocate this map or not, per kernel, from measurements.

For one map spec and the program types that touch it, in each kernel's test
VM (or here): the map's kernel memory empty / full / peak in both allocation
modes, the update -> lookup -> delete triple's speed, whether each program
type loads with the map and what the verifier says, and the lock paths — the
stress scenarios allocator (the seed's kprobe on spin_unlock paths) and
reentry (a nested update under the bucket lock) on this very spec, run by the
host in the same kernel's test VM.  A measurement you skip (--skip) is
replaced by the era's prediction, marked "predicted, not run".  Then a
recommendation with its reasons.  Exit status 3 when the mode the spec asks
for is unsafe on any kernel (refused for one of its programs, or it may lock
the kernel up), 0 when it is safe on all of them.
"""

from __future__ import annotations

import argparse
import os
import sys

from pybpfmap.commands.args import (
    add_json,
    add_kernel,
    add_list,
    emit,
    host_only,
    positive_float,
    u32,
)
from pybpfmap.maps import TYPES, MapSpec

STRESS_SECONDS = 10.0


def register(sub: argparse._SubParsersAction) -> None:
    from pybpfmap import advise, progtypes

    p = sub.add_parser("advise", help="one map spec: preallocate or not, per kernel, "
                       "from measurements", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--type", choices=TYPES, default="hash")
    p.add_argument("--key-size", type=u32, default=4, metavar="N")
    p.add_argument("--value-size", type=u32, default=8, metavar="N")
    p.add_argument("--max-entries", type=u32, default=10000, metavar="N")
    p.add_argument("--no-prealloc", action="store_true",
                   help="the spec asks for BPF_F_NO_PREALLOC (both modes are measured; "
                   "the exit status is about this one)")
    add_list(p, "--prog", "--progs", dest="progs", valid=list(progtypes.PROG_TYPES),
             metavar="TYPE", help="program types that use the map "
             f"({', '.join(progtypes.PROG_TYPES)}; default kprobe,tracepoint)")
    add_list(p, "--skip", valid=list(advise.MEASUREMENTS), metavar="WHAT",
             help=f"measurements to replace by the era's prediction "
             f"({', '.join(advise.MEASUREMENTS)})")
    host_only(p.add_argument("--stress-seconds", type=positive_float, default=STRESS_SECONDS,
                             metavar="S", help="seconds of each lock-path row (default "
                             "%(default)g)"))
    add_json(p)
    add_kernel(p, "measure")
    p.set_defaults(func=run)


def _spec(args: argparse.Namespace) -> MapSpec:
    return MapSpec(args.type, not args.no_prealloc, args.key_size, args.value_size,
                   args.max_entries)


def run(args: argparse.Namespace) -> int:
    from pybpfmap import advise
    from pybpfmap.errors import EnvironmentProblem
    from pybpfmap.output import Progress

    spec = _spec(args)
    progs = args.progs or ["kprobe", "tracepoint"]
    skip = args.skip or []
    if os.geteuid() != 0:
        raise EnvironmentProblem("permissions", "advise needs root (bpf(2)): run with sudo")
    if args.kernels:
        answers = [_in_vm(args, kernel, spec, skip) for kernel in args.kernels]
    else:
        from pybpfmap.kernel import place

        where, _ = place()
        progress = Progress(len(advise.modes_of(spec)) * 3)
        try:
            answer = advise.measure_here(spec, progs, skip, where, progress.step)
        finally:
            progress.done()
        if "stress" not in skip:
            answer.skipped.append("stress")   # the stress scenarios run in a test VM only
        answers = [answer]
    for a in answers:
        advise.decide(a)
    emit(args, answers, advise.render_text)
    return advise.exit_status(answers)


def _in_vm(args: argparse.Namespace, kernel, spec: MapSpec, skip: list[str]):
    """The guest's measurements, then the lock-path rows of this spec in the
    same kernel's test VM (a boot per row the era predicts may lock up)."""
    from pybpfmap import advise
    from pybpfmap.commands import invm
    from pybpfmap.vm.run import no_prealloc_tracing_splats, results_folder

    folder = results_folder(args.results, "advise", kernel, len(args.kernels) > 1)
    one = argparse.Namespace(**{**vars(args), "kernels": [kernel],
                                "results": str(folder / "measure")})
    (answer,) = invm.records(one, advise.load, timeout=1800,
                             expected_splats=no_prealloc_tracing_splats)
    answer.where = f"vm:{kernel.name}"
    if "stress" in skip:
        return answer
    from pybpfmap.stress import kinds
    from pybpfmap.stress.host import run_in_vm
    from pybpfmap.stress.run import Options
    from pybpfmap.stress.scenarios import SCENARIOS

    chosen = [kinds.custom(answer.spec(m.prealloc)) for m in answer.modes if not m.refused]
    print(f"pybpfmap advise: {kernel.name}: lock paths ({', '.join(advise.LOCK_SCENARIOS)}) "
          f"on {', '.join(k.name for k in chosen)}", file=sys.stderr, flush=True)
    opts = Options(scenarios=[SCENARIOS[n] for n in advise.LOCK_SCENARIOS], kinds=chosen,
                   duration=float(args.stress_seconds))
    stress = run_in_vm(opts, kernel, ["stress", "--duration", f"{args.stress_seconds:g}"],
                       None, folder / "stress")
    advise.add_lock_paths(answer, stress.rows)
    answer.skipped = [m for m in answer.skipped if m != "stress"]
    return answer
