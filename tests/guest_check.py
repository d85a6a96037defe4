"""Run inside a test-VM guest by tests/test_catalog.py: what the kernel says
about itself, and whether BCC compiles and loads a hash-map program on it.

Prints one JSON document: ``info`` (pybpfmap info), ``kallsyms_unlock`` (the
spin_unlock functions that are functions in /proc/kallsyms), ``traceable``
(those ftrace can trace) and ``bcc`` (the program loaded: its map's kernel
map_flags, or the error)."""

from __future__ import annotations

import json
import re
import sys

from pybpfmap import kernel, tracefs
from pybpfmap.commands.info import local
from pybpfmap.records import to_json


def bcc_load() -> dict:
    from bcc import BPF

    from pybpfmap import bpfsys
    from pybpfmap.loader import bcc_program, load_func, map_fd
    from pybpfmap.stress.kinds import BY_NAME

    kind = BY_NAME["hash/prealloc"]
    try:
        with bcc_program("stress.c", maps={"MAP": kind.spec},
                         cflags=["-DNPROBES=1", "-DNERRNO=136"]) as bpf:
            fd = load_func(bpf, "on_probe0", BPF.KPROBE, "guest check")
            info, _ = bpfsys.prog_info(fd)
            return {"loaded": True, "prog_type": info.type,
                    "map_flags": bpfsys.map_info(map_fd(bpf, "MAP")).map_flags}
    except Exception as e:  # reported to the host test, which fails on it
        return {"loaded": False, "error": f"{type(e).__name__}: {e}"}


def main() -> None:
    k = local()
    with open("/proc/kallsyms") as f:
        funcs = {m.group(1) for m in re.finditer(r" [tTwW] (\S+)$", f.read(), re.M)}
    traceable = tracefs.traceable_functions() or set()
    json.dump({"info": to_json(k),
               "kallsyms_unlock": sorted(set(kernel.UNLOCK_FUNCTIONS) & funcs),
               "traceable_unlock": sorted(set(kernel.UNLOCK_FUNCTIONS) & traceable),
               "bcc": bcc_load()}, sys.stdout)


if __name__ == "__main__":
    main()
