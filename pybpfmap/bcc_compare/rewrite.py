"""Rewrite a BCC tool's ``BPF_HASH`` declarations to non-preallocated hash maps.

``BPF_HASH`` takes no flags.  bcc's ``helpers.h`` (compiled into libbcc;
``strings libbcc.so.0 | grep 'define BPF_HASH'``) defines it with optional
arguments::

    BPF_HASH(name)                     -> BPF_TABLE("hash", u64, u64, name, 10240)
    BPF_HASH(name, key)                -> BPF_TABLE("hash", key, u64, name, 10240)
    BPF_HASH(name, key, leaf)          -> BPF_TABLE("hash", key, leaf, name, 10240)
    BPF_HASH(name, key, leaf, size)    -> BPF_TABLE("hash", key, leaf, name, size)

and ``BPF_TABLE(...)`` is ``BPF_F_TABLE(..., 0)``.  The only way to ask for
flags is the base macro, so :func:`no_prealloc` spells each declaration out
as ``BPF_F_TABLE("hash", key, leaf, name, size, BPF_F_NO_PREALLOC)`` with the
same defaults.  Other map kinds (``BPF_HISTOGRAM``, ``BPF_PERCPU_HASH``,
``BPF_HASH_OF_MAPS``...) are left alone: only the start/end hash maps the
tools declare with ``BPF_HASH`` change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pybpfmap.errors import UsageError

DEFAULT_KEY = "u64"
DEFAULT_LEAF = "u64"
DEFAULT_SIZE = "10240"

# BPF_HASH( but not BPF_HASH_OF_MAPS( or BPF_HASH1(; not preceded by an identifier char
# (so "#define MY_BPF_HASH(" is not touched).
_DECL = re.compile(r"(?<![A-Za-z0-9_])BPF_HASH\s*\(")


@dataclass(frozen=True)
class Declaration:
    """One ``BPF_HASH`` declaration as the rewrite understood it."""

    name: str
    key: str
    leaf: str
    size: str
    original: str

    def as_f_table(self, flags: str) -> str:
        return f'BPF_F_TABLE("hash", {self.key}, {self.leaf}, {self.name}, {self.size}, {flags})'


def _split_args(text: str, start: int) -> tuple[list[str], int]:
    """Split the macro arguments that begin at ``text[start]`` (just after the
    opening parenthesis) on top-level commas; return them and the index just
    past the closing parenthesis."""
    depth = 0
    args, current = [], []
    i = start
    while i < len(text):
        c = text[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                args.append("".join(current).strip())
                return args, i + 1
            depth -= 1
        elif c == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
            i += 1
            continue
        current.append(c)
        i += 1
    raise UsageError("BPF text", f"unbalanced parentheses in BPF_HASH declaration at offset "
                     f"{start}")


def _declaration(args: list[str], original: str) -> Declaration:
    if not 1 <= len(args) <= 4 or not args[0]:
        raise UsageError("BPF text", f"BPF_HASH takes 1 to 4 arguments, got {original!r}")
    defaults = [None, DEFAULT_KEY, DEFAULT_LEAF, DEFAULT_SIZE]
    full = args + defaults[len(args):]
    return Declaration(name=full[0], key=full[1], leaf=full[2], size=full[3],
                       original=original)


def find_hashes(text: str) -> list[Declaration]:
    """Every ``BPF_HASH(...)`` declaration in ``text``, in order."""
    found = []
    for m in _DECL.finditer(text):
        args, end = _split_args(text, m.end())
        found.append(_declaration(args, text[m.start():end]))
    return found


def no_prealloc(text: str, flags: str = "BPF_F_NO_PREALLOC") -> tuple[str, list[Declaration]]:
    """``text`` with each ``BPF_HASH(...)`` replaced by an equivalent
    ``BPF_F_TABLE("hash", ..., flags)``; also the declarations rewritten."""
    out, decls, pos = [], [], 0
    for m in _DECL.finditer(text):
        if m.start() < pos:  # inside a declaration already consumed
            continue
        args, end = _split_args(text, m.end())
        decl = _declaration(args, text[m.start():end])
        out.append(text[pos:m.start()])
        out.append(decl.as_f_table(flags))
        decls.append(decl)
        pos = end
    out.append(text[pos:])
    return "".join(out), decls
