"""PASS or FAIL, per row and overall, with the reason for every FAIL.

A pure function over the result dictionary that :mod:`pybpfmap.stress.run`
builds (and that the host merges with the VM runner's outcome), so the rules
are testable without a kernel.  PASS needs all of:

* the machine stayed responsive: the heartbeat was never later than the
  limit, no workload got stuck, and the VM runner (when used) saw the guest
  finish — not hung, panicked, timed out or lost;
* no kernel splat that the era does not explain (:func:`era.allowed_splats`);
* every probe fired: each row ran its handler (events > 0);
* every error is explained for this kernel era (:func:`era.explain_error`).

Global failures fail every row too: a deadlock anywhere voids all rows.
"""

from __future__ import annotations

from pybpfmap.maps import MapSpec
from pybpfmap.stress import era

PASS, FAIL = "PASS", "FAIL"
DEFAULT_HEARTBEAT_LIMIT_S = 5.0
GOOD_VM_OUTCOMES = ("passed", "failed", "splat")  # the guest ran to the end


def global_reasons(result: dict, heartbeat_limit: float) -> list[str]:
    """Why the whole run fails, whatever the rows say."""
    out = []
    hb = result.get("heartbeat")
    if hb is None:
        out.append("no heartbeat measured")
    elif hb["max_delay_s"] > heartbeat_limit:
        out.append(f"machine unresponsive: heartbeat {hb['max_delay_s']:.2f} s late "
                   f"(limit {heartbeat_limit:g} s)")
    for name, w in (result.get("workloads", {}).get("stressed") or {}).items():
        if w.get("error"):
            out.append(f"workload {name}: {w['error']}")
        elif not w.get("ops"):
            out.append(f"workload {name} made no progress under the probes")
    for s in result.get("splats", []):
        out.append(f"kernel splat ({s['kind']}): {s['line'].strip()}")
    vm = result.get("vm")
    if vm is not None:
        if vm["outcome"] not in GOOD_VM_OUTCOMES:
            out.append(f"VM runner: guest {vm['outcome']}: {vm.get('message', '')}".rstrip(": "))
        if not result.get("guest_result", True):
            out.append("the guest wrote no stress result")
    return out


def row_reasons(row: dict, release: str) -> list[str]:
    """Why one (probe, map) row fails on its own; fills ``row['explained']``."""
    out = []
    if row["events"] <= 0:
        out.append(f"{row['probe']} never ran the handler for this map")
    spec = MapSpec(row["type"], row["prealloc"])
    failed_updates = sum(row["errors"].get("update", {}).values())
    explained = {}
    for op, errs in row["errors"].items():
        for err, n in errs.items():
            why = era.explain_error(release, spec, op, err, failed_updates, n)
            if why is None:
                out.append(f"{op} returned {err} {n}x: not explained for kernel {release}")
            else:
                explained[f"{op}:{err}"] = why
    row["explained"] = explained
    return out


def judge(result: dict, heartbeat_limit: float = DEFAULT_HEARTBEAT_LIMIT_S) -> dict:
    """Set ``verdict`` and ``reasons`` on each row and on ``result``; return it."""
    release = result["kernel_release"]
    glob = global_reasons(result, heartbeat_limit)
    if not result.get("rows"):
        glob.append("no rows: nothing was attached")
    for row in result.get("rows", []):
        reasons = row_reasons(row, release)
        row["reasons"] = reasons
        row["verdict"] = FAIL if reasons or glob else PASS
    failing = [f"{r['probe']} {r['type']}/{'prealloc' if r['prealloc'] else 'no_prealloc'}: "
               f"{'; '.join(r['reasons'])}" for r in result.get("rows", []) if r["reasons"]]
    result["reasons"] = glob + failing
    result["verdict"] = FAIL if result["reasons"] else PASS
    return result
