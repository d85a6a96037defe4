"""Run an installed BCC tool with its hash maps switched to BPF_F_NO_PREALLOC.

Usage (a child process; :mod:`pybpfmap.bcc_compare.run` starts it)::

    python -m pybpfmap.bcc_compare.launcher --mode noprealloc --report FILE -- \\
        /usr/sbin/runqlat-bpfcc [tool args]

The tool's own script runs unchanged in this process (``runpy``), so its pid
is the one whose maps the parent inspects.  Before it starts, ``bcc.BPF.__init__``
is wrapped: in ``noprealloc`` mode the BPF C text is passed through
:func:`pybpfmap.bcc_compare.rewrite.no_prealloc`; in ``shipped`` mode it is
left as is (the wrapper still runs, so both modes pay the same Python cost).
Either way one JSON line per ``BPF(...)`` call is appended to FILE, naming the
``BPF_HASH`` maps found, so the parent knows which kernel maps to check.
The installed tool is never modified.
"""

from __future__ import annotations

import argparse
import functools
import json
import runpy
import sys

from pybpfmap.bcc_compare.rewrite import find_hashes, no_prealloc
from pybpfmap.errors import UsageError

MODES = ("shipped", "noprealloc")


def _rewrite_text(text: str | bytes | None, mode: str) -> tuple[str | bytes | None, list[str]]:
    if not text:
        return text, []
    as_bytes = isinstance(text, bytes)
    src = text.decode() if as_bytes else text
    if mode == "noprealloc":
        src, decls = no_prealloc(src)
    else:
        try:
            decls = find_hashes(src)
        except UsageError:  # only informative in this mode: never stop the tool
            decls = []
    names = [d.name for d in decls]
    return (src.encode() if as_bytes else src), names


def install(mode: str, report: str) -> None:
    """Wrap ``bcc.BPF.__init__`` for the rest of this process."""
    import bcc

    original = bcc.BPF.__init__

    @functools.wraps(original)
    def init(self, src_file=b"", hdr_file=b"", text=None, *args, **kwargs):
        text, names = _rewrite_text(text, mode)
        with open(report, "a") as f:
            f.write(json.dumps({"mode": mode, "bpf_hash": names}) + "\n")
        return original(self, src_file, hdr_file, text, *args, **kwargs)

    bcc.BPF.__init__ = init


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pybpfmap.bcc_compare.launcher")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--report", required=True, help="file to append BPF() records to")
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    install(ns.mode, ns.report)
    sys.argv = [ns.script, *ns.args]
    runpy.run_path(ns.script, run_name="__main__")


if __name__ == "__main__":
    main()
