"""``report.md`` from ``results.json``: tables per section, one table across kernels."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _records(data: Any) -> list[dict]:
    """A command's records, whether it printed a list or an object holding one."""
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    if isinstance(data, dict):
        for key in ("records", "rows", "results"):
            if isinstance(data.get(key), list):
                return data[key]
    return []


def _mib(n: Any) -> Any:
    return round(n / 2**20, 2) if isinstance(n, (int, float)) else None


def render_info(data: dict) -> str:
    hdr = data.get("headers") or {}
    rows = [
        ["kernel", data.get("kernel_release")],
        ["in a VM", f"{data.get('in_vm')} ({data.get('virt')})"],
        ["kprobes", f"{data.get('kprobes')}: {data.get('kprobes_reason')}"],
        ["headers", hdr.get("note", "none")],
        ["unlock symbols", ", ".join(data.get("unlock_symbols") or []) or "none"],
    ]
    return md_table(["", ""], rows)


def render_maps(data: Any) -> str:
    rows = []
    for r in _records(data):
        if r.get("skipped"):
            rows.append([r["type"], "prealloc" if r["prealloc"] else "no_prealloc", None, None,
                         None, None, None, f"skipped: {r['skipped']}"])
            continue
        rows.append([r["type"], "prealloc" if r["prealloc"] else "no_prealloc",
                     hex(r["map_flags"]), r["create_ms"], _mib(r["memlock_empty"]),
                     _mib(r["memlock_full"]), _mib(r["memlock_drained"]),
                     r.get("new_key_when_full")])
    return md_table(["type", "alloc", "map_flags", "create ms", "MiB empty", "MiB full",
                     "MiB drained", "new key when full"], rows)


def render_bench(data: Any) -> str:
    rows = []
    for r in _records(data):
        rows.append([r.get("mode"), r.get("type"),
                     "prealloc" if r.get("prealloc") else "no_prealloc", r.get("cpus"),
                     r.get("max_entries"), r.get("ns_per_op"), r.get("events_per_sec"),
                     r.get("runs"), r.get("cv")])
    return md_table(["mode", "type", "alloc", "CPUs", "max_entries", "ns/op", "events/s",
                     "runs", "CV"], rows)


def render_stress(data: Any) -> str:
    out = ""
    if isinstance(data, dict) and "verdict" in data:
        out += f"**Verdict: {data['verdict']}**"
        if data.get("variant") == "tracepoint":
            out += (" — the weaker tracepoint variant (no kprobes on this kernel: lock and "
                    "kmem tracepoints instead of spin_unlock)")
        for reason in data.get("reasons") or []:
            out += f"\n- {reason}"
        out += "\n\n"
    rows = []
    for r in _records(data):
        errors = r.get("errors")
        if isinstance(errors, dict):
            errors = ", ".join(f"{k}: {v}" for k, v in errors.items() if v) or "none"
        rows.append([r.get("probe"), r.get("type"),
                     "prealloc" if r.get("prealloc") else "no_prealloc",
                     r.get("events"), errors, r.get("verdict")])
    return out + md_table(["probe", "type", "alloc", "events", "errors", "verdict"], rows)


def render_bcc_compare(data: Any) -> str:
    rows = []
    for r in _records(data):
        if r.get("status", "ok") != "ok":
            rows.append([r.get("tool"), None, None, None, None, None, r.get("where"),
                         f"{r.get('status')}: {r.get('reason')}"])
            continue
        flags = r.get("map_flags")
        if isinstance(flags, dict):
            flags = ", ".join(f"{k}={v}" for k, v in flags.items())
        rows.append([r.get("tool"), r.get("mode") or ("prealloc" if r.get("prealloc")
                                                      else "no_prealloc"),
                     flags, r.get("baseline"), r.get("with_tool"),
                     r.get("overhead_ns_per_event"), r.get("where"), None])
    return md_table(["tool", "maps", "map_flags (kernel)", "baseline ops/s",
                     "with tool ops/s", "overhead ns/event", "where", "note"], rows)


def render_info_maps(data: Any) -> str:
    data = data or {}
    return render_info(data.get("info") or {}) + "\n" + render_maps(data.get("maps"))


RENDERERS = {
    "info": render_info,
    "maps": render_maps,
    "bench": render_bench,
    "stress": render_stress,
    "bcc-compare": render_bcc_compare,
    "info+maps": render_info_maps,
}


def _release_of(results: dict, where: str) -> str | None:
    """The kernel release measured at ``where``, from whichever section says."""
    for s in results["sections"]:
        data = s.get("data")
        if s["where"] != where or not isinstance(data, dict):
            continue
        release = data.get("kernel_release") or (data.get("info") or {}).get("kernel_release")
        if release:
            return release
    return None


def across_kernels(results: dict) -> str:
    """One row per place measured: release, kprobes, stress verdict, memory of a
    hash map in both modes."""
    rows = []
    for where in results["places"]:
        by = {s["name"]: s for s in results["sections"] if s["where"] == where}
        facts = (by.get("info") or {}).get("data") or \
            ((by.get("info+maps") or {}).get("data") or {}).get("info") or {}
        maps = (by.get("maps") or {}).get("data") or \
            ((by.get("info+maps") or {}).get("data") or {}).get("maps")
        mem = {r["prealloc"]: r for r in _records(maps) if r.get("type") == "hash"
               and not r.get("skipped")}
        stress = (by.get("stress") or {}).get("data") or {}
        verdict = stress.get("verdict") if isinstance(stress, dict) else None
        if verdict and stress.get("variant") == "tracepoint":
            verdict += " (tracepoint variant)"
        rows.append([where, _release_of(results, where), facts.get("kprobes"), verdict,
                     _mib((mem.get(True) or {}).get("memlock_empty")),
                     _mib((mem.get(False) or {}).get("memlock_empty")),
                     _mib((mem.get(False) or {}).get("memlock_full"))])
    return md_table(["where", "kernel", "kprobes", "stress verdict",
                     "hash prealloc MiB (empty)", "hash no_prealloc MiB (empty)",
                     "hash no_prealloc MiB (full)"], rows)


def era_notes(results: dict) -> str:
    from pybpfmap.stress import era

    out = []
    for where in results["places"]:
        release = _release_of(results, where)
        if not release:
            continue
        out.append(f"**{where} ({release})**\n")
        out += [f"- {line}" for line in era.expectations(release)]
        out.append("")
    return "\n".join(out) + "\n"


def render(results: dict) -> str:
    """The whole report as Markdown."""
    parts = [f"# pybpfmap report\n\nGenerated {results['generated']} by "
             f"`{results['command']}` on {results['host_release']}.  Every figure below "
             "was measured in this run; the raw data is in `results.json`, each command's "
             "output in its folder.  Figures from a test VM under TCG are emulated, not "
             "hardware figures.\n"]
    parts.append("## Across kernels\n\n" + across_kernels(results))
    parts.append("## What each kernel era predicts\n\n" + era_notes(results))
    failed = [s for s in results["sections"] if s.get("error")]
    if failed:
        parts.append("## Sections that failed\n\n" + md_table(
            ["section", "where", "error"], [[s["name"], s["where"], s["error"]] for s in failed]))
    for s in results["sections"]:
        title = f"## {s['name']} on {s['where']}\n\n"
        body = f"`pybpfmap {' '.join(s['argv'])}` — {s['seconds']} s, output in " \
               f"`{s['folder']}/`\n\n"
        if s.get("data") is None:
            body += f"No result: {s.get('error')}\n"
        else:
            try:
                body += RENDERERS[s["name"]](s["data"])
            except (KeyError, TypeError, AttributeError, ValueError):
                body += "```json\n" + json.dumps(s["data"], indent=1)[:20000] + "\n```\n"
        for png in s.get("plots", []):
            body += f"\n![{s['name']} {s['where']}]({png})\n"
        parts.append(title + body)
    return "\n".join(parts)
