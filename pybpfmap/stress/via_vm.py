"""Run the stress test inside the test VM and merge what the runner saw.

The guest runs ``python3 -m pybpfmap stress --in-guest ...``, which writes
its (judged) result to ``$PYBPFMAP_RESULTS/stress.json``.  The host then
adds the runner's outcome (hung, panic, timeout, lost), the splats in the
guest's whole dmesg (minus those the era allows) and judges again, so a guest
that froze or crashed is a FAIL even though it could not report anything.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from pybpfmap.maps import MapSpec
from pybpfmap.stress import era
from pybpfmap.stress.run import Options

RESULT_FILE = "stress.json"


def guest_command(opts: Options) -> list[str]:
    """The in-guest command line for these options."""
    cmd = ["python3", "-m", "pybpfmap", "stress", "--in-guest", "--json",
           "--duration", f"{opts.duration:g}",
           "--heartbeat-limit", f"{opts.heartbeat_limit:g}"]
    if opts.probes:
        cmd += ["--probes", *opts.probes]
    if opts.types:
        cmd += ["--types", *opts.types]
    if opts.tracepoints:
        cmd.append("--tracepoints")
    if opts.inject:
        cmd += ["--inject", opts.inject]
    if opts.baseline is not None:
        cmd += ["--baseline", f"{opts.baseline:g}"]
    return cmd


def merge(vm: dict, guest: dict | None, opts: Options, maps_prealloc: list[bool]) -> dict:
    """The host's result: the guest's, plus the runner's view.  ``vm`` is
    ``VmResult.to_dict()``; ``guest`` the guest's JSON or None."""
    release = vm.get("kernel_release") or (guest or {}).get("kernel_release") or "0.0"
    if guest is None:
        result = {"variant": "tracepoint" if opts.tracepoints else "kprobe",
                  "kernel_release": release, "duration_s": opts.duration,
                  "rows": [], "splats": [], "guest_result": False, "inject": opts.inject}
    else:
        result = dict(guest)
        result["guest_result"] = True
    allow = era.allowed_splats(release, [MapSpec("hash", p) for p in maps_prealloc])
    seen = {s["line"] for s in result.get("splats", [])}
    for s in vm.get("splats", []):
        if s["line"] in seen or any(re.search(a, s["line"]) for a in allow):
            continue
        result.setdefault("splats", []).append(s)
    result["vm"] = {k: vm.get(k) for k in ("outcome", "message", "exit_code", "accel",
                                            "kernel_release", "results_dir", "evidence",
                                            "boot_seconds", "seconds")}
    if guest is None and "heartbeat" not in result:
        result["heartbeat"] = None
    return result


def run_via_vm(opts: Options, kernel: str, results_dir: Path | None = None) -> dict:
    """Boot the ``kernel`` image, run the stress test in it, return the merged
    (not yet judged) result."""
    from pybpfmap.stress.programs import select_maps
    from pybpfmap.vm import run_in_vm

    maps = select_maps(opts.types)
    res = run_in_vm(guest_command(opts), kernel=kernel, cpus=2,
                    timeout=opts.duration * 4 + 600, hang_timeout=60,
                    results_dir=results_dir, stream=sys.stderr)
    path = Path(res.results_dir) / RESULT_FILE
    guest = None
    if path.is_file():
        try:
            guest = json.loads(path.read_text())
        except ValueError:
            guest = None
    return merge(res.to_dict(), guest, opts, [s.prealloc for _, _, s in maps])
