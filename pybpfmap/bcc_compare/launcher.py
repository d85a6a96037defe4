"""Run an installed BCC tool with its hash maps switched to BPF_F_NO_PREALLOC,
and let the parent detach and re-attach its probes without reloading it.

Usage (a child process; :mod:`pybpfmap.bcc_compare.process` starts it)::

    python -m pybpfmap.bcc_compare.launcher --mode noprealloc --control IN,OUT -- \\
        /usr/sbin/runqlat-bpfcc [tool args]

The tool's own script runs unchanged in this process (``runpy``), so its pid
is the one whose maps the parent inspects.  The installed tool is never
modified.  Before it starts, this module wraps ``bcc.BPF``:

``BPF.__init__``
    In ``noprealloc`` mode the BPF C text is passed through
    :func:`pybpfmap.bcc_compare.rewrite.no_prealloc`; in ``shipped`` mode it
    is left as is (the wrapper still runs, so both modes pay the same Python
    cost).  Either way, *before* BCC compiles it, one message tells the
    parent the ``BPF_HASH`` maps found and whether the rewrite changes the
    text at all (opensnoop's kfunc path declares no hash map: then both modes
    would load the same program and the parent stops here, before the slow
    compile).
``BPF.attach_*``
    Every attachment the tool makes (directly, or through BCC's automatic
    ``kprobe__``/``TRACEPOINT_PROBE``/``KFUNC_PROBE`` loading) is recorded
    with its arguments — only the outermost call, so an ``event_re`` or
    ``sym_re`` attach is one record.

On file descriptor IN the parent sends one command per line; each gets a
JSON reply line on OUT (where the ``bpf`` and ``loaded`` events go too):

``park``    detach every probe, as ``BPF.cleanup()`` does, but keep the
            programs and maps loaded: the tool stays compiled, idle.
``resume``  replay the recorded attach calls.  BCC caches loaded programs by
            name (``BPF.load_func``), so nothing is compiled or loaded again:
            the same programs and maps go back on the same hooks.
``status``  how many attachments are open.

The commands run in a thread of their own, under the same lock as the
tool's attach calls, while the tool's main thread sleeps or polls its perf
buffer as usual.  Why this exists: BCC compiles each tool with clang at
start, which takes a minute under TCG; parking lets one process per mode
serve many interleaved measurement windows (see :mod:`.run`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import runpy
import sys
import threading
from typing import Any

from pybpfmap.bcc_compare.rewrite import no_prealloc
from pybpfmap.errors import UsageError

MODES = ("shipped", "noprealloc")

ATTACH_METHODS = ("attach_kprobe", "attach_kretprobe", "attach_uprobe", "attach_uretprobe",
                  "attach_tracepoint", "attach_raw_tracepoint", "attach_kfunc",
                  "attach_kretfunc", "attach_lsm")
# BCC's tables of open attachments and the method that closes one entry, in
# the order BPF.cleanup() uses them.
DETACH = (("kprobe_fds", "detach_kprobe_event"), ("uprobe_fds", "detach_uprobe_event"),
          ("tracepoint_fds", "detach_tracepoint"), ("raw_tracepoint_fds", "detach_raw_tracepoint"),
          ("kfunc_entry_fds", "detach_kfunc"), ("kfunc_exit_fds", "detach_kretfunc"),
          ("lsm_fds", "detach_lsm"))
# How the BPF text hooks itself up, for the "not comparable" explanation.
TEXT_KINDS = (("KRETFUNC_PROBE(", "kfunc"), ("KFUNC_PROBE(", "kfunc"),
              ("RAW_TRACEPOINT_PROBE(", "raw tracepoint"), ("TRACEPOINT_PROBE(", "tracepoint"),
              ("kprobe__", "kprobe"), ("kretprobe__", "kprobe"))


def text_kinds(src: str) -> list[str]:
    """The automatic attach kinds a BPF text declares (``KFUNC_PROBE`` -> kfunc)."""
    return list(dict.fromkeys(kind for marker, kind in TEXT_KINDS if marker in src))


def rewrite_text(text: str | bytes | None, mode: str) -> tuple[str | bytes | None, dict]:
    """The text to compile in ``mode`` and the message describing it:
    ``bpf_hash`` (names declared), ``rewritable`` (whether the rewrite changes
    the text), ``empty``, ``kinds`` and ``error`` (the rewrite could not parse
    it; the text is then returned unchanged)."""
    if not text:
        return text, {"event": "bpf", "mode": mode, "bpf_hash": [], "rewritable": False,
                      "empty": True, "kinds": [], "error": None}
    as_bytes = isinstance(text, bytes)
    src = text.decode() if as_bytes else text
    info: dict[str, Any] = {"event": "bpf", "mode": mode, "empty": False,
                            "kinds": text_kinds(src), "error": None}
    try:
        rewritten, decls = no_prealloc(src)
    except UsageError as e:
        rewritten, decls, info["error"] = src, [], e.message()
    info["bpf_hash"] = [d.name for d in decls]
    info["rewritable"] = rewritten != src
    out = rewritten if mode == "noprealloc" else src
    return (out.encode() if as_bytes else out), info


def _open_count(bpf: Any) -> int:
    n = 0
    for table, _ in DETACH:
        for v in getattr(bpf, table, {}).values():
            n += len(v) if isinstance(v, dict) else 1  # kprobe_fds: {ev: {fn: fd}}
    return n


class Attachments:
    """The tool's BPF objects and the attach calls it made on them."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.bpfs: list[Any] = []
        self.calls: list[tuple[Any, str, tuple, dict]] = []
        self.parked = False
        self._replaying = False
        self._local = threading.local()

    def wrap(self, cls: type, name: str) -> None:
        original = getattr(cls, name, None)
        if original is None:  # an older BCC without this kind
            return

        @functools.wraps(original)
        def attach(bpf, *args, **kwargs):
            with self.lock:
                depth = getattr(self._local, "depth", 0)
                self._local.depth = depth + 1
                try:
                    result = original(bpf, *args, **kwargs)
                finally:
                    self._local.depth = depth
                if depth == 0 and not self._replaying:
                    self.calls.append((bpf, name, args, kwargs))
                return result

        setattr(cls, name, attach)

    def open_count(self) -> int:
        with self.lock:
            return sum(_open_count(b) for b in self.bpfs)

    def park(self) -> int:
        """Detach everything; return how many attachments were closed."""
        with self.lock:
            closed = 0
            for bpf in self.bpfs:
                for table, method in DETACH:
                    for key in list(getattr(bpf, table, {})):
                        value = getattr(bpf, table)[key]
                        closed += len(value) if isinstance(value, dict) else 1
                        getattr(bpf, method)(key)
            self.parked = True
            return closed

    def resume(self) -> int:
        """Replay the recorded attach calls; return the attachments open."""
        with self.lock:
            if not self.parked:
                raise RuntimeError("not parked")
            self._replaying = True
            try:
                for bpf, name, args, kwargs in self.calls:
                    getattr(bpf, name)(*args, **kwargs)
            finally:
                self._replaying = False
            self.parked = False
            return self.open_count()


class Channel:
    """JSON lines to the parent on fd OUT (thread-safe)."""

    def __init__(self, fd: int | None):
        self._f = os.fdopen(fd, "w", buffering=1) if fd is not None else None
        self._lock = threading.Lock()

    def send(self, msg: dict) -> None:
        if self._f is None:
            return
        # BrokenPipeError: the parent went away (pybpfmap.procs then ends us).
        with self._lock, contextlib.suppress(BrokenPipeError, ValueError):
            self._f.write(json.dumps(msg) + "\n")


def serve(commands: int, channel: Channel, attachments: Attachments) -> None:
    """The control loop (its own thread): one command per line on fd ``commands``."""
    with os.fdopen(commands, "r") as f:
        for line in f:
            cmd = line.strip()
            reply: dict[str, Any] = {"reply": cmd, "ok": True}
            try:
                if cmd == "park":
                    reply["detached"] = attachments.park()
                    reply["open"] = attachments.open_count()
                elif cmd == "resume":
                    reply["open"] = attachments.resume()
                elif cmd == "status":
                    reply["open"] = attachments.open_count()
                    reply["parked"] = attachments.parked
                else:
                    raise RuntimeError(f"unknown command {cmd!r}")
            except Exception as e:  # reported to the parent, which fails the run
                reply = {"reply": cmd, "ok": False, "error": f"{type(e).__name__}: {e}"}
            channel.send(reply)


def install(mode: str, channel: Channel) -> Attachments:
    """Wrap ``bcc.BPF`` for the rest of this process."""
    import bcc

    attachments = Attachments()
    original = bcc.BPF.__init__

    @functools.wraps(original)
    def init(self, src_file=b"", hdr_file=b"", text=None, *args, **kwargs):
        text, info = rewrite_text(text, mode)
        channel.send(info)
        if info["error"] and mode == "noprealloc":
            raise RuntimeError(f"pybpfmap cannot rewrite this BPF text: {info['error']}")
        original(self, src_file, hdr_file, text, *args, **kwargs)
        with attachments.lock:
            attachments.bpfs.append(self)
        channel.send({"event": "loaded", "mode": mode, "open": _open_count(self)})

    bcc.BPF.__init__ = init
    for name in ATTACH_METHODS:
        attachments.wrap(bcc.BPF, name)
    return attachments


def _fd_pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected IN,OUT file descriptors, not {text!r}") from None
    return a, b


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pybpfmap.bcc_compare.launcher", allow_abbrev=False)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--control", type=_fd_pair, metavar="IN,OUT",
                        help="file descriptors: commands in, events and replies out")
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    channel = Channel(ns.control[1] if ns.control else None)
    attachments = install(ns.mode, channel)
    if ns.control:
        threading.Thread(target=serve, args=(ns.control[0], channel, attachments),
                         name="pybpfmap-control", daemon=True).start()
    sys.argv = [ns.script, *ns.args]
    runpy.run_path(ns.script, run_name="__main__")


if __name__ == "__main__":
    main()
