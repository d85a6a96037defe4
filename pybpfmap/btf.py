"""Read struct layouts from the kernel's BTF (``/sys/kernel/btf/vmlinux``).

Only what :mod:`pybpfmap.kfacts` needs: the members of a named struct and the
name of each member's type (through pointers, typedefs and qualifiers).  The
format is include/uapi/linux/btf.h: a header (magic 0xeB9F, hdr_len, then the
type and string sections' offsets and lengths, relative to the header's end),
then ``struct btf_type`` records (name_off, info with vlen in bits 0-15 and the
kind in bits 24-28, size or type), each followed by its kind's trailing data.

>>> b = Btf.parse(synthetic_btf("bpf_htab", [("map_locked", "int")]))
>>> b.members("bpf_htab")
{'map_locked': 'int'}
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VMLINUX = "/sys/kernel/btf/vmlinux"
MAGIC = 0xEB9F

# enum btf_kind values.
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)

# Bytes after the 12-byte struct btf_type: (fixed, per vlen entry).
_TRAILING = {INT: (4, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12), ENUM: (0, 8),
             FUNC_PROTO: (0, 8), VAR: (4, 0), DATASEC: (0, 12), DECL_TAG: (4, 0),
             ENUM64: (0, 12)}
# Kinds whose ``type`` field refers to another type (followed for a type's name).
_REFERS = {PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}


class BtfError(ValueError):
    """Bytes that are not BTF this parser can read."""


@dataclass(frozen=True)
class BtfType:
    kind: int
    name: str
    ref: int                                    # size_or_type
    members: tuple[tuple[str, int], ...] = ()   # STRUCT/UNION: (name, type id)
    elem: int = 0                               # ARRAY: the element type id


class Btf:
    """The types of one BTF blob, by id (id 0 is void)."""

    def __init__(self, types: list[BtfType | None]):
        self.types = types

    @classmethod
    def parse(cls, data: bytes) -> Btf:
        if len(data) < 24:
            raise BtfError("shorter than a BTF header")
        for order in ("<", ">"):
            if struct.unpack_from(order + "H", data)[0] == MAGIC:
                break
        else:
            raise BtfError(f"bad magic {data[:2].hex()}")
        hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(order + "5I", data, 4)
        types_at, strs_at = hdr_len + type_off, hdr_len + str_off
        if types_at + type_len > len(data) or strs_at + str_len > len(data):
            raise BtfError("sections run past the end of the data")
        strings = data[strs_at:strs_at + str_len]

        def name(off: int) -> str:
            end = strings.find(b"\0", off)
            return strings[off:end if end >= 0 else len(strings)].decode(errors="replace")

        out: list[BtfType | None] = [None]
        pos, end = types_at, types_at + type_len
        hdr, member = struct.Struct(order + "3I"), struct.Struct(order + "3I")
        while pos < end:
            name_off, info, ref = hdr.unpack_from(data, pos)
            pos += 12
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            fixed, each = _TRAILING.get(kind, (0, 0))
            members: tuple[tuple[str, int], ...] = ()
            elem = 0
            if kind in (STRUCT, UNION):
                members = tuple((name(m_name), m_type) for m_name, m_type, _ in
                                (member.unpack_from(data, pos + 12 * i) for i in range(vlen)))
            elif kind == ARRAY:
                elem = struct.unpack_from(order + "I", data, pos)[0]
            pos += fixed + each * vlen
            out.append(BtfType(kind, name(name_off) if kind in (STRUCT, UNION, TYPEDEF, INT,
                                                                 FWD, ENUM, ENUM64, FLOAT)
                               else "", ref, members, elem))
        if pos != end:
            raise BtfError("the type section does not end on a type boundary")
        return cls(out)

    def find_struct(self, name: str) -> BtfType | None:
        """The (first, complete) struct called ``name``."""
        return next((t for t in self.types
                     if t is not None and t.kind == STRUCT and t.name == name), None)

    def type_name(self, tid: int, depth: int = 0) -> str:
        """A C-ish name: "int", "struct bucket *", "rqspinlock_t", "int *[2]"."""
        t = self.types[tid] if 0 <= tid < len(self.types) else None
        if t is None or depth > 16:
            return "void"
        if t.kind in (STRUCT, UNION, FWD, ENUM, ENUM64):
            tag = {STRUCT: "struct", UNION: "union"}.get(t.kind, "enum" if t.kind != FWD
                                                          else "struct")
            return f"{tag} {t.name}" if t.name else f"{tag} <anon>"
        if t.kind == PTR:
            return self.type_name(t.ref, depth + 1) + " *"
        if t.kind == ARRAY:
            return self.type_name(t.elem, depth + 1) + "[]"
        if t.kind in (CONST, VOLATILE, RESTRICT, TYPE_TAG):
            return self.type_name(t.ref, depth + 1)
        return t.name or "?"

    def target(self, tid: int) -> BtfType | None:
        """The type ``tid`` points at or names, qualifiers and typedefs peeled off."""
        for _ in range(16):
            t = self.types[tid] if 0 < tid < len(self.types) else None
            if t is None or t.kind not in _REFERS:
                return t
            tid = t.ref
        return None

    def members(self, struct_name: str) -> dict[str, str] | None:
        """Member name -> member type name of ``struct struct_name``; None if no such struct."""
        t = self.find_struct(struct_name)
        return None if t is None else self.members_of(t)

    def members_of(self, t: BtfType, depth: int = 0) -> dict[str, str]:
        """Its members, those of anonymous struct/union members included (5.10's
        ``struct bucket`` keeps ``raw_lock`` in one)."""
        out: dict[str, str] = {}
        for m, tid in t.members:
            inner = None if m or depth > 8 else self.target(tid)
            if inner is not None and inner.kind in (STRUCT, UNION):
                out.update(self.members_of(inner, depth + 1))
            elif m:
                out[m] = self.type_name(tid)
        return out

    def member_struct(self, struct_name: str, member: str) -> BtfType | None:
        """The struct that member ``member`` of ``struct struct_name`` is or points to."""
        t = self.find_struct(struct_name)
        tid = dict(t.members).get(member) if t else None
        return self.target(tid) if tid else None


def read_vmlinux(path: str = VMLINUX) -> Btf | None:
    """The running kernel's BTF, or None when it has none (CONFIG_DEBUG_INFO_BTF off)."""
    try:
        with open(path, "rb") as f:
            return Btf.parse(f.read())
    except OSError:
        return None


def synthetic_btf(struct_name: str, members: list[tuple[str, str]],
                  order: str = "<") -> bytes:
    """A small BTF blob: one ``int`` and each named base type, a pointer to
    ``struct_name``, and ``struct struct_name`` with ``members`` (name, base
    type name) — for tests, and as the format's executable description."""
    strings = bytearray(b"\0")

    def s(text: str) -> int:
        off = len(strings)
        strings.extend(text.encode() + b"\0")
        return off

    types = bytearray()
    ids: dict[str, int] = {}
    for base in dict.fromkeys(t for _, t in members):
        ids[base] = len(ids) + 1
        types += struct.pack(order + "3I", s(base), INT << 24, 4)
        types += struct.pack(order + "I", 32)                         # INT: encoding, bits
    sid = len(ids) + 2
    types += struct.pack(order + "3I", 0, PTR << 24, sid)              # a pointer to it
    types += struct.pack(order + "3I", s(struct_name), STRUCT << 24 | len(members),
                         4 * len(members))
    for i, (m, base) in enumerate(members):
        types += struct.pack(order + "3I", s(m), ids[base], 32 * i)
    header = struct.pack(order + "HBB5I", MAGIC, 1, 0, 24, 0, len(types), len(types),
                         len(strings))
    return header + bytes(types) + bytes(strings)
