"""Ask the kernel which maps a running tool owns and what flags they carry.

The tool's process holds an fd for each map it created; ``/proc/<pid>/fdinfo``
gives each one's ``map_id``.  pybpfmap opens its own fd on that ID
(BPF_MAP_GET_FD_BY_ID) and reads ``struct bpf_map_info`` (BPF_OBJ_GET_INFO_BY_FD),
the same record ``bpftool map show`` prints — so the flags reported are the
kernel's, not what the BPF text asked for.  Programs are checked the same way
(``bpftool -j prog show id N``) to tell whether any program uses a map at all,
and their ``run_cnt`` (``bpf_prog_info``, counted while BPF_ENABLE_STATS is on)
tells whether a program ran: how the harness checks that a parked tool's
programs really stay off their hooks.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess

from pybpfmap import bpfsys
from pybpfmap.procs import wait_until


def _fd_ids(pid: int, key: str) -> list[int]:
    ids = []
    fd_dir = f"/proc/{pid}/fdinfo"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return ids
    for fd in names:
        try:
            info = bpfsys.fdinfo(int(fd), pid)
        except (OSError, ValueError):
            continue  # closed meanwhile
        if key in info:
            ids.append(int(info[key]))
    return sorted(set(ids))


def map_ids(pid: int) -> list[int]:
    """IDs of the BPF maps process ``pid`` holds an fd for."""
    return _fd_ids(pid, "map_id")


def prog_ids(pid: int) -> list[int]:
    """IDs of the BPF programs process ``pid`` holds an fd for."""
    return _fd_ids(pid, "prog_id")


def map_record(map_id: int) -> dict:
    """The kernel's bpf_map_info for ``map_id``."""
    fd = bpfsys.map_fd_by_id(map_id)
    try:
        info = bpfsys.map_info(fd)
    finally:
        os.close(fd)
    return {"id": info.id, "name": info.name.decode(errors="replace"), "type": info.type,
            "map_flags": info.map_flags, "max_entries": info.max_entries,
            "key_size": info.key_size, "value_size": info.value_size}


def used_map_ids(progs: list[int]) -> set[int] | None:
    """Map IDs referenced by the programs ``progs`` (bpftool's ``map_ids``);
    None if bpftool is not available."""
    used: set[int] = set()
    for pid in progs:
        try:
            out = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(pid)],
                                 capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            continue  # unloaded meanwhile
        used.update(json.loads(out.stdout).get("map_ids", []))
    return used


def tool_maps(pid: int, hash_names: list[str]) -> dict:
    """The start/end hash maps of the tool running as ``pid``, by name.

    ``hash_names`` are the ``BPF_HASH`` names the launcher saw (the kernel
    keeps the first 15 characters, BPF_OBJ_NAME_LEN).  Returns
    ``{"maps": {name: record}, "unused": [names no program references]}``.
    """
    records = [map_record(i) for i in map_ids(pid)]
    wanted = {n[:15]: n for n in hash_names}
    maps = {wanted[r["name"]]: r for r in records if r["name"] in wanted}
    used = used_map_ids(prog_ids(pid))
    unused = [] if used is None else sorted(n for n, r in maps.items() if r["id"] not in used)
    return {"maps": maps, "unused": unused, "all_maps": len(records)}


def still_loaded(ids: set[int], timeout: float = 5.0) -> set[int]:
    """Which of map ``ids`` are still loaded after up to ``timeout`` s.

    A map is freed after the last program using it, and programs are freed
    after an RCU grace period (kernel/bpf/syscall.c, ``__bpf_prog_put_rcu``),
    so IDs vanish a little after the tool's process has exited.
    """
    left = ids

    def gone() -> bool:
        nonlocal left
        left = ids & bpfsys.all_ids(bpfsys.MAP_GET_NEXT_ID)
        return not left

    wait_until(gone, timeout, 0.05)
    return left


PROG_GET_FD_BY_ID = 13  # enum bpf_cmd (include/uapi/linux/bpf.h)


class _ProgGetFdByIdAttr(ctypes.Structure):
    _fields_ = [("prog_id", ctypes.c_uint32), ("next_id", ctypes.c_uint32),
                ("open_flags", ctypes.c_uint32), ("_pad", ctypes.c_char * (128 - 12))]


def prog_run_counts(pid: int) -> dict[int, int]:
    """``run_cnt`` of every BPF program process ``pid`` holds, by program ID
    (all zero unless run-time statistics are on: :func:`pybpfmap.bpfsys.stats_enabled`)."""
    counts = {}
    for prog_id in prog_ids(pid):
        try:
            fd = bpfsys.bpf(PROG_GET_FD_BY_ID, _ProgGetFdByIdAttr(prog_id=prog_id))
        except OSError:
            continue  # unloaded meanwhile
        try:
            info, _ = bpfsys.prog_info(fd)
        finally:
            os.close(fd)
        counts[prog_id] = info.run_cnt
    return counts
