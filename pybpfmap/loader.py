"""Load a program from ``bpf/`` with BCC, and always unload it.

Every BCC object pybpfmap makes goes through :func:`bcc_program`, a context
manager: on normal exit, on an exception and on Ctrl-C the probes are detached
and the programs and maps closed (``BPF.cleanup``), so that nothing stays
loaded.  Before BCC runs, each map in ``maps`` is created once with bpf(2)
(:meth:`MapSpec.preflight`) so that a kernel refusal is reported with its
errno — BCC itself only prints strerror text and raises a bare Exception.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pybpfmap.errors import EnvironmentProblem, KernelError
from pybpfmap.headers import ensure_headers
from pybpfmap.maps import MapSpec

if TYPE_CHECKING:
    from bcc import BPF

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"


def bpf_source(name: str) -> Path:
    """Path of ``bpf/<name>``; a clear error if the tree has no bpf/ dir."""
    path = BPF_DIR / name
    if not path.is_file():
        raise EnvironmentProblem(f"bpf/{name}", f"BPF source not found at {path} (pybpfmap "
                                 "runs from its source tree: pip install -e .)")
    return path


def map_cflags(maps: Mapping[str, MapSpec]) -> list[str]:
    return [flag for name, spec in maps.items() for flag in spec.cflags(name)]


@contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """What BCC (C++, printing to fd 2) says inside the block, in the yielded
    list once the block is left; re-printed when the block succeeds."""
    said: list[str] = []
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        ok = False
        try:
            yield said
            ok = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            text = log.read().decode(errors="replace")
            said.append(text)
            if ok:
                sys.stderr.write(text)  # warnings BCC printed on success still reach stderr


# libbcc's line before the verifier's log of a refused load; lines of that log
# which are not the verifier's verdict (instructions, source, register state,
# statistics).
_LOAD_FAILED = "bpf: Failed to load program"
_NOT_VERDICT = ("func#", "Validating", ";", "processed", _LOAD_FAILED)


def verifier_words(said: str) -> str | None:
    """The verifier's last words in what BCC printed on a refused load (``R0
    !read_ok``; ``trace type programs can only use preallocated hash map``):
    the last line of the log after libbcc's "bpf: Failed to load program" that
    is not an instruction, a source line or the statistics.  A Python
    traceback after the log (a tool's stderr) is not read.  None if there is none."""
    lines = said.splitlines()
    marks = [i for i, ln in enumerate(lines) if ln.startswith(_LOAD_FAILED)]
    words = None
    for line in lines[marks[-1] + 1 if marks else 0:]:
        line = line.strip()
        if line.startswith("Traceback"):
            break
        if line and not line[:1].isdigit() and not line.startswith(_NOT_VERDICT):
            words = line
    return words


def errno_of(strerror: str) -> int | None:
    """The errno whose strerror text is in ``strerror`` (BCC reports a refusal
    with strerror text, not the number); None if none is."""
    for err in sorted(errno.errorcode):
        if os.strerror(err) in strerror:
            return err
    return None


def _refusal(what: str, error: Exception, log: str) -> KernelError | None:
    """A KernelError for BCC's "Failed to load BPF program X: <strerror>": the
    errno and the verifier's own last words.  None for anything else."""
    m = re.search(r"Failed to load BPF program (\S+): (.*)", str(error))
    if m is None:
        return None
    said = verifier_words(log) or m.group(2)
    program = re.sub(r"^b?'|'$", "", m.group(1))  # BCC prints the name as bytes
    return KernelError(what, errno_of(m.group(2)) or errno.EINVAL,
                       f"the kernel refused to load {program}: {said}")


@contextmanager
def bcc_program(name: str, *, maps: Mapping[str, MapSpec] | None = None,
                cflags: Sequence[str] = ()) -> Iterator[BPF]:
    """Compile and load ``bpf/<name>`` with BCC; yield the ``BPF`` object.

    ``maps`` maps a declaration name (``PYBPFMAP_MAP(NAME)`` in the C file) to
    its spec; ``cflags`` are extra ``-D`` defines.  A program the kernel
    refuses at load (BCC loads auto-attached ones such as RAW_TRACEPOINT_PROBE
    right away) is a :class:`KernelError` with the verifier's words; a compile
    failure an :class:`EnvironmentProblem`.
    """
    maps = maps or {}
    path = bpf_source(name)
    ensure_headers()
    for spec in maps.values():
        spec.preflight()
    from bcc import BPF

    flags = [f"-I{BPF_DIR}", *map_cflags(maps), *cflags]
    error = None
    with _stderr_captured() as said:
        try:
            bpf = BPF(src_file=str(path).encode(), cflags=flags)
        except Exception as e:  # bcc raises bare Exception; its details went to fd 2
            error = e
    if error is not None:
        refused = _refusal(f"bpf/{name}", error, said[0])
        if refused is not None:
            raise refused
        sys.stderr.write(said[0])
        raise EnvironmentProblem(f"bpf/{name}", f"BCC could not compile or load it: {error}")
    try:
        yield bpf
    finally:
        bpf.cleanup()


def load_func(bpf: BPF, name: str, prog_type: int, what: str) -> int:
    """``bpf.load_func`` that turns a refusal into a :class:`KernelError` with
    the errno and the verifier's own words (BCC prints its log to fd 2 and
    raises a bare Exception): the fd of the loaded program."""
    error = None
    with _stderr_captured() as said:
        try:
            fd = bpf.load_func(name.encode(), prog_type).fd
        except Exception as e:  # bcc raises bare Exception
            error = e
    if error is None:
        return fd
    refused = _refusal(what, error, said[0])
    raise refused or KernelError(what, errno_of(str(error)) or errno.EINVAL,
                                 f"the kernel refused to load {name}: {error}")


def map_fd(bpf: BPF, name: str) -> int:
    """The fd of map ``name`` in a loaded BCC object."""
    return bpf[name.encode()].map_fd
