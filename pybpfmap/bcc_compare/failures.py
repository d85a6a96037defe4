"""Why a tool was not measured, as types: BCC's words read once, where they are read.

A tool that does not start says why on its stderr, in BCC's words: libbcc
prints clang's errors and the verifier's log to fd 2, and BCC's Python raises
a bare ``Exception`` with text (the traceback's last line).  :func:`tool_failure`
reads that text once, as the tool process reports a failure
(:meth:`pybpfmap.bcc_compare.process.ToolProcess.failure`), and returns the most
specific of these; callers dispatch on the type (``except BccCannotAttach``),
never on the text:

- :class:`NoPreallocRefused`: the kernel refuses BPF_F_NO_PREALLOC hash maps
  in tracing programs (PREEMPT_RT before 6.1: :data:`pybpfmap.era.RT_REFUSAL`);
- :class:`BccRefused`: the kernel refused to load a program for another reason;
- :class:`BccNotCompilable`: clang cannot compile the tool's C against this
  kernel's headers (seen: trixie's BCC 0.30 and tcpconnect/biolatency on 7.3);
- :class:`BccCannotAttach`: a kprobe target is missing, inlined or notrace
  here (biolatency's blk_account_io_done on 6.1 with BCC 0.26);
- :class:`ToolFailed`: anything else (the tool died, hung, or printed nothing
  it normally prints).

Each is a :class:`pybpfmap.errors.PybpfmapError` whose message is the sentence
the records carry, naming the tool and its mode itself (``runqlat
(noprealloc) exited with status 1 before tracing: ...``).
"""

from __future__ import annotations

import errno
import re

from pybpfmap import era
from pybpfmap.bcc_compare.tools import Tool
from pybpfmap.errors import EXIT_KERNEL, PybpfmapError
from pybpfmap.loader import errno_of, verifier_words

# What BCC says when a kprobe target is inlined, notrace or missing.
NOT_TRACEABLE = "it's not traceable"
_TARGET = re.compile(r"to k(?:ret)?probe b?'([^']+)'")
# What BCC says when clang cannot compile the tool's C.
NOT_COMPILABLE = "Failed to compile BPF module"
_CLANG_ERROR = re.compile(r"^(\S+:\d+:\d+: error: .*)$", re.M)
# A refused load: libbcc's line (then the verifier's log), BCC's exception
# (the traceback's last line, not its quote of the source), or BCC's exception
# for EPERM (bcc/__init__.py, BPF.load_func).
_REFUSED = re.compile(r"^bpf: Failed to load program: (.*)$"
                      r"|^Exception: Failed to load BPF program \S+: (.*)$", re.M)
_NEED_ROOT = "Need super-user privileges to run"


class ToolError(PybpfmapError):
    """About one BCC tool: ``param`` names it (and its mode); the message is
    one sentence that names them itself, as the records show it."""

    def __init__(self, param: str, sentence: str, err: int | None = None):
        super().__init__(param, sentence, err, EXIT_KERNEL)

    def message(self) -> str:
        return self.meaning


class NotComparable(ToolError):
    """The rewrite does not change the tool's BPF text: both modes are one program."""

    def __init__(self, tool: Tool, info: dict):
        self.tool, self.info = tool, info
        kinds = ", ".join(info.get("kinds") or []) or "no automatic probes"
        super().__init__(tool.name, f"no hash map to rewrite: the BPF text {tool.name} builds "
                         f"here ({kinds}) declares no BPF_HASH, so both modes would load the "
                         "same program")


class ToolFailed(ToolError):
    """The tool did not start, did not attach, or did not print what it
    normally prints; ``stderr`` is what it said (head and tail)."""

    def __init__(self, param: str, sentence: str, stderr: str = "", err: int | None = None):
        self.stderr = stderr
        super().__init__(param, sentence, err)


class BccRefused(ToolFailed):
    """The kernel refused to load one of the tool's programs: ``err`` is the
    errno BCC reported (None if it did not say), ``verifier`` the verifier's
    last words (None without a log)."""

    def __init__(self, param: str, sentence: str, stderr: str, err: int | None,
                 verifier: str | None):
        self.verifier = verifier
        super().__init__(param, sentence, stderr, err)


class NoPreallocRefused(BccRefused):
    """The kernel refuses BPF_F_NO_PREALLOC hash maps in tracing programs
    (PREEMPT_RT, :data:`pybpfmap.era.RT_REFUSAL`): the kernel's answer for
    the rewritten tool, not a failed run."""


class BccNotCompilable(ToolFailed):
    """clang could not compile the tool's C here; ``clang_error`` is its first
    error line (None if it printed none in that form)."""

    def __init__(self, param: str, sentence: str, stderr: str, clang_error: str | None):
        self.clang_error = clang_error
        super().__init__(param, sentence, stderr)


class BccCannotAttach(ToolFailed):
    """A kprobe target of the tool is missing, inlined or notrace on this
    kernel; ``target`` is the function BCC named."""

    def __init__(self, param: str, sentence: str, stderr: str, target: str | None):
        self.target = target
        super().__init__(param, sentence, stderr)


def _refusal_errno(stderr: str) -> int | None:
    if _NEED_ROOT in stderr:
        return errno.EPERM
    for m in _REFUSED.finditer(stderr):
        err = errno_of(m.group(1) or m.group(2))
        if err is not None:
            return err
    return None


def tool_failure(param: str, sentence: str, stderr: str = "") -> ToolFailed:
    """The failure of tool ``param`` (``runqlat (noprealloc)``) told by
    ``sentence``, typed by what BCC said: ``stderr`` is the tool's, and
    ``sentence`` may carry BCC's words too (a command's error reply)."""
    if era.RT_REFUSAL in stderr:
        return NoPreallocRefused(param, sentence, stderr, _refusal_errno(stderr),
                                 era.RT_REFUSAL)
    if NOT_COMPILABLE in stderr:
        first = _CLANG_ERROR.search(stderr)
        return BccNotCompilable(param, sentence, stderr, first.group(1) if first else None)
    if NOT_TRACEABLE in sentence:
        target = _TARGET.search(sentence)
        return BccCannotAttach(param, sentence, stderr, target.group(1) if target else None)
    if _REFUSED.search(stderr) or _NEED_ROOT in stderr:
        return BccRefused(param, sentence, stderr, _refusal_errno(stderr),
                          verifier_words(stderr))
    return ToolFailed(param, sentence, stderr)
