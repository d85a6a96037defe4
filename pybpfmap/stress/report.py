"""The human table for a judged stress result (``--json`` prints the dict)."""

from __future__ import annotations

from typing import TextIO


def _errs(errors: dict[str, dict[str, int]]) -> str:
    parts = [f"{op} {err}x{n}" for op, errs in errors.items() for err, n in errs.items()]
    return ", ".join(parts) or "-"


def _num(v: object) -> str:
    return "-" if v is None else str(v)


def print_report(result: dict, out: TextIO) -> None:
    """Per-row table, probes, workloads, heartbeat, splats, verdict."""
    w = out.write
    where = "inside the test VM" if result.get("vm") else ("VM" if result.get("in_vm") else "host")
    w(f"pybpfmap stress: {result['variant']} variant, kernel {result['kernel_release']} "
      f"({where}), {result['duration_s']:g} s under probes\n")
    if result.get("note"):
        w(f"NOTE: {result['note']}\n")
    for e in result.get("expectations", []):
        w(f"  era: {e}\n")
    if result.get("inject"):
        w(f"  NEGATIVE CONTROL: --inject {result['inject']} (this run is meant to FAIL)\n")
    w("\n")
    head = ("probe", "type", "prealloc", "events", "errors", "prog runs", "nmissed",
            "rec.miss", "verdict")
    rows = [(r["probe"], r["type"], "yes" if r["prealloc"] else "no", str(r["events"]),
             _errs(r["errors"]), _num(r.get("prog_run_cnt")), _num(r.get("kprobe_nmissed")),
             _num(r.get("recursion_misses")), r.get("verdict", "?"))
            for r in result.get("rows", [])]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    line = "  ".join("{:<" + str(wd) + "}" for wd in widths)
    w(line.format(*head) + "\n")
    for r in rows:
        w(line.format(*r) + "\n")
    for probe, why in result.get("unavailable", {}).items():
        w(f"  not probed: {probe}: {why}\n")
    explained = {}
    for r in result.get("rows", []):
        explained.update(r.get("explained", {}))
    for key, why in explained.items():
        w(f"  explained {key}: {why}\n")
    w("\nworkloads (ops/s without -> with probes):\n")
    wl = result.get("workloads", {})
    for name, b in (wl.get("baseline") or {}).items():
        s = (wl.get("stressed") or {}).get(name, {})
        ratio = (wl.get("ratio") or {}).get(name)
        w(f"  {name:<8} {b.get('ops_per_s', 0):>12.1f} -> {s.get('ops_per_s', 0):>12.1f}"
          f"  (x{_num(ratio)}){'  ' + s['error'] if s.get('error') else ''}\n")
    hb = result.get("heartbeat")
    if hb:
        w(f"heartbeat: {hb['beats']} beats, worst delay {hb['max_delay_s']:.3f} s\n")
    vm = result.get("vm")
    if vm:
        w(f"VM runner: outcome {vm['outcome']}, accel {vm.get('accel')}, "
          f"guest kernel {vm.get('kernel_release')}\n")
    for s in result.get("splats", []):
        w(f"SPLAT ({s['kind']}): {s['line'].strip()}\n")
    w(f"\nverdict: {result['verdict']}\n")
    for reason in result.get("reasons", []):
        w(f"  - {reason}\n")
