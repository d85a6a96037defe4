"""Turn measurements into records (the ``--json`` format) and a table.

Throughput is workload operations per second.  Overhead per event is
``1/with_tool - 1/baseline`` seconds per operation, in ns, computed per run
against that run's own baseline; the record carries the median and the
spread (median, min, max, CV = stdev/mean) over runs.  ``vs_shipped_ns_per_event``
(rewritten records only) is the per-run difference of the two modes'
overheads: positive means BPF_F_NO_PREALLOC cost more per event.
"""

from __future__ import annotations

import statistics

from pybpfmap.bcc_compare.run import Measurement, ToolRun
from pybpfmap.bcc_compare.tools import Tool
from pybpfmap.stats import spread

OPERATION = {
    "wakeups": "pipe round trip between two tasks on one CPU (2 wakeups)",
    "getpid": "libc getpid() call",
    "open": "open()+close() of /dev/null",
    "tcp_connect": "TCP connect+accept over loopback",
    "block_io": "4 KiB O_DIRECT read",
}


def _rate(sample: tuple[int, float]) -> float:
    ops, elapsed = sample
    return ops / elapsed


def overhead_ns(baseline: float, with_tool: float) -> float:
    """Extra ns per operation: (1/with_tool - 1/baseline) seconds, in ns."""
    return (1.0 / with_tool - 1.0 / baseline) * 1e9


def _flags(runs: list[ToolRun]) -> tuple[dict[str, int], dict[str, list[int]]]:
    """map name -> flags (last run), and every distinct value seen over runs."""
    seen: dict[str, list[int]] = {}
    for r in runs:
        for name, rec in r.maps["maps"].items():
            seen.setdefault(name, [])
            if rec["map_flags"] not in seen[name]:
                seen[name].append(rec["map_flags"])
    last = {name: rec["map_flags"] for name, rec in runs[-1].maps["maps"].items()}
    return last, seen


def records(m: Measurement, where: str, kernel: str) -> list[dict]:
    """One record per mode for a measured tool."""
    base = [_rate(s) for s in m.baseline]
    per_mode: dict[str, list[float]] = {}
    out = []
    for mode, runs in m.runs.items():
        rates = [r.ops / r.elapsed for r in runs]
        over = [overhead_ns(b, w) for b, w in zip(base, rates, strict=True)]
        per_mode[mode] = over
        flags, seen = _flags(runs)
        rec = {
            "tool": m.tool.name, "status": "ok", "mode": mode,
            "prealloc": mode == "shipped",
            "map_flags": flags,
            "map_flags_seen": seen,
            "maps": runs[-1].maps["maps"],
            "maps_unused_by_programs": runs[-1].maps["unused"],
            "baseline": statistics.median(base),
            "with_tool": statistics.median(rates),
            "overhead_ns_per_event": statistics.median(over),
            "unit": "ops/s",
            "workload": m.tool.workload,
            "operation": OPERATION[m.tool.workload],
            "args": list(m.tool.args),
            "start_end_maps": list(m.tool.hash_maps),
            "attach": m.tool.attach,
            "where": where, "kernel": kernel,
            "runs": len(runs), "duration": m.duration,
            "spread": {"baseline": spread(base), "with_tool": spread(rates),
                       "overhead_ns_per_event": spread(over)},
            "progs_loaded_at_baseline": m.progs_at_baseline,
            "output": runs[-1].evidence,
            "output_lines": runs[-1].output_lines,
        }
        out.append(rec)
    diff = [n - s for n, s in zip(per_mode["noprealloc"], per_mode["shipped"], strict=True)]
    for rec in out:
        if rec["mode"] == "noprealloc":
            rec["vs_shipped_ns_per_event"] = statistics.median(diff)
            rec["spread"]["vs_shipped_ns_per_event"] = spread(diff)
    return out


def not_run(tool: Tool, status: str, reason: str, where: str, kernel: str) -> dict:
    """A record for a tool that was skipped (``status="skipped"``) or failed."""
    return {"tool": tool.name, "status": status, "reason": reason, "where": where,
            "kernel": kernel, "attach": tool.attach, "workload": tool.workload}


def _fmt_cv(s: dict) -> str:
    return "-" if s["cv"] is None else f"{100 * s['cv']:.0f}%"


def table(recs: list[dict]) -> str:
    """The human-readable table, then one line per tool not measured."""
    head = (f"{'tool':<12} {'where':<12} {'maps (kernel map_flags)':<26} {'baseline/s':>11} "
            f"{'with tool/s':>11} {'ns/event':>9} {'min..max':>15} {'cv':>5} "
            f"{'vs prealloc':>11}")
    lines = [head, "-" * len(head)]
    notes: list[str] = []
    warnings: list[str] = []
    for r in recs:
        if r["status"] != "ok":
            notes.append(f"{r['reason']} [{r['status']} on {r['where']}]")
            continue
        maps = ",".join(f"{k}={v:#x}" for k, v in r["map_flags"].items()) or "(none found)"
        s = r["spread"]["overhead_ns_per_event"]
        vs = r.get("vs_shipped_ns_per_event")
        vs_text = "" if vs is None else f"{vs:+.0f} ns"
        lines.append(
            f"{r['tool']:<12} {r['where']:<12} {maps:<26} {r['baseline']:>11.0f} "
            f"{r['with_tool']:>11.0f} {r['overhead_ns_per_event']:>9.0f} "
            f"{s['min']:>7.0f}..{s['max']:<7.0f} {_fmt_cv(s):>5} {vs_text:>11}")
        if any(r.get("progs_loaded_at_baseline", [])) and r["mode"] == "shipped":
            warnings.append(f"{r['tool']}: other BPF programs were loaded during its baselines "
                         f"({r['progs_loaded_at_baseline']}): baselines may include their "
                         "cost")
        if not r["map_flags"] and r["mode"] == "shipped":
            warnings.append(f"{r['tool']}: the BPF text it loaded declares no "
                            "BPF_HASH (e.g. opensnoop's kfunc mode needs no start map): "
                            "nothing was rewritten, both modes are the same program")
        accel = r.get("vm", {}).get("accel", "")
        if accel.startswith("tcg") and r["mode"] == "shipped":
            warnings.append(f"{r['tool']}: measured in a VM under {accel} (CPU emulation): "
                            "ns/event is not comparable with hardware, and noisy")
        if r["maps_unused_by_programs"]:
            warnings.append(f"{r['tool']} ({r['mode']}): no loaded program uses "
                         f"{', '.join(r['maps_unused_by_programs'])}: its flags cannot "
                         "change the cost here")
    ok = [r for r in recs if r["status"] == "ok"]
    if ok:
        lines.append("")
        lines.append(f"event = one workload operation; {ok[0]['runs']} run(s) of "
                     f"{ok[0]['duration']:g} s each; ns/event = median of per-run "
                     "(1/with_tool - 1/baseline); vs prealloc = median per-run difference")
        for name in dict.fromkeys(r["tool"] for r in ok):
            r = next(x for x in ok if x["tool"] == name)
            lines.append(f"  {name}: {r['operation']}; output seen: {r['output']!r}")
    notes += warnings
    return "\n".join(lines + ([""] + notes if notes else []))
