"""Which BPF maps and programs are loaded, and which a finished command left behind.

The tests' accounting of BPF objects: ground truth from the kernel (bpf(2)
``BPF_*_GET_NEXT_ID``, what ``bpftool map/prog list`` shows) and from
``/proc/*/fdinfo`` (who still holds them).  pybpfmap itself never needs it:
its objects are unloaded by context managers (:func:`pybpfmap.loader.bcc_program`).
"""

from __future__ import annotations

from pathlib import Path

from pybpfmap import bpfsys

KINDS = ("maps", "progs")


def loaded_ids() -> dict[str, set[int]]:
    """IDs of every BPF map and program loaded on the system right now."""
    return {"maps": bpfsys.all_ids(bpfsys.MAP_GET_NEXT_ID),
            "progs": bpfsys.all_ids(bpfsys.PROG_GET_NEXT_ID)}


def held_ids() -> dict[str, set[int]]:
    """Map and program IDs held open by some live process (/proc/*/fdinfo)."""
    held: dict[str, set[int]] = {kind: set() for kind in KINDS}
    for fdinfo in Path("/proc").glob("[0-9]*/fdinfo/*"):
        try:
            text = fdinfo.read_text()
        except OSError:
            continue  # the process or fd went away
        for line in text.splitlines():
            if line.startswith("map_id:"):
                held["maps"].add(int(line.split()[1]))
            elif line.startswith("prog_id:"):
                held["progs"].add(int(line.split()[1]))
    return held


def leftovers(before: dict[str, set[int]]) -> dict[str, set[int]]:
    """Objects loaded since ``before`` that no process holds any more: what a
    finished command left behind (pinned, or attached without an owner).
    Objects of other, still running processes do not count."""
    now, held = loaded_ids(), held_ids()
    return {kind: ids - before[kind] - held[kind] for kind, ids in now.items()
            if ids - before[kind] - held[kind]}
