"""What a stress run could leave behind, listed so that before == after can be
checked (the tests' accounting; pybpfmap itself never needs it).

Ground truth is the kernel: program and map IDs from bpf(2)
(:func:`tests.bpf_objects.loaded_ids`), names from ``bpftool -j``, the text of
``kprobe_events`` and the network namespaces under /run/netns.
"""

from __future__ import annotations

import json
import os
import subprocess

from pybpfmap.procs import wait_until
from pybpfmap.stress.allocator import NPROBES
from pybpfmap.tracefs import KPROBE_EVENTS
from tests.bpf_objects import loaded_ids

# Names bpf/stress.c and bpf/reentry.c give their programs and maps (object
# names are truncated to 15 characters, BPF_OBJ_NAME_LEN).
PROG_NAMES = {f"on_probe{i}" for i in range(NPROBES)} | {"inner", "raw_tracepoint_"}
MAP_NAMES = {"MAP", "stress_counts", "stress_errno", "stress_value", "outer_counts",
             "inner_counts", "inner_fired", "in_outer", "reentry_value"}


def _bpftool(kind: str) -> list[dict]:
    out = subprocess.run(["bpftool", "-j", kind, "list"], capture_output=True, text=True,
                         timeout=30, check=True)
    return json.loads(out.stdout or "[]")


def snapshot() -> dict:
    """Everything of ours that is loaded or created right now."""
    try:
        with open(KPROBE_EVENTS) as f:
            kprobes = f.read()
    except OSError:
        kprobes = None
    try:
        netns = sorted(n for n in os.listdir("/run/netns") if n.startswith("pybpfmap-"))
    except FileNotFoundError:
        netns = []
    return {
        "ids": loaded_ids(),
        "bpftool_progs": sorted(p["id"] for p in _bpftool("prog")
                                if p.get("name") in PROG_NAMES),
        "bpftool_maps": sorted(m["id"] for m in _bpftool("map")
                               if m.get("name") in MAP_NAMES),
        "kprobe_events": kprobes,
        "netns": netns,
    }


def left_behind(before: dict, after: dict) -> dict:
    """What ``after`` has that ``before`` did not, restricted to our objects
    (other programs may come and go on a shared machine)."""
    ours_progs = set(after["bpftool_progs"]) - set(before["bpftool_progs"])
    ours_maps = set(after["bpftool_maps"]) - set(before["bpftool_maps"])
    out = {}
    if ours_progs:
        out["progs"] = sorted(ours_progs)
    if ours_maps:
        out["maps"] = sorted(ours_maps)
    if after["kprobe_events"] != before["kprobe_events"]:
        out["kprobe_events"] = after["kprobe_events"]
    if set(after["netns"]) - set(before["netns"]):
        out["netns"] = sorted(set(after["netns"]) - set(before["netns"]))
    return out


def settled(before: dict, timeout: float = 5.0) -> dict:
    """:func:`left_behind` after giving the kernel up to ``timeout`` seconds:
    perf events and programs are freed after an RCU grace period, so an ID
    can outlive its last fd by a few milliseconds."""
    left: dict = {}

    def clean() -> bool:
        nonlocal left
        left = left_behind(before, snapshot())
        return not left

    wait_until(clean, timeout, 0.1)
    return left


def quiescent(timeout: float = 10.0) -> dict:
    """A :func:`snapshot` once two in a row agree (what earlier runs left to the
    kernel's RCU-deferred frees is gone), or the last one after ``timeout``."""
    last: dict | None = None

    def steady() -> bool:
        nonlocal last
        now = snapshot()
        same, last = now == last, now
        return same

    wait_until(steady, timeout, 0.2)
    return last
