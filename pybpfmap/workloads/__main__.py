"""``python -m pybpfmap.workloads NAME SECONDS``: one window, as JSON;
``python -m pybpfmap.workloads --serve NAME``: windows on request (:func:`.server.serve`)."""

from __future__ import annotations

import json
import sys

from pybpfmap.workloads import WORKLOADS
from pybpfmap.workloads.server import serve


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--serve"]:
        serve(args[1])
        return
    name, duration = args[:2]
    with WORKLOADS[name]() as w:
        got = w.window(float(duration))
    print(json.dumps({"workload": name, "ops": got.ops, "elapsed": got.elapsed,
                      "counts": got.counts}))


if __name__ == "__main__":
    main()
