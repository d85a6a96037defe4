"""The BPF_HASH -> BPF_F_TABLE(..., BPF_F_NO_PREALLOC) rewrite, as text and as loaded maps."""

from __future__ import annotations

import pytest

from pybpfmap import bpfsys
from pybpfmap.bcc_compare.rewrite import find_hashes, no_prealloc
from pybpfmap.errors import UsageError
from pybpfmap.guest import in_test_vm

F = "BPF_F_NO_PREALLOC"


@pytest.mark.parametrize("decl, expected", [
    ("BPF_HASH(start);", f'BPF_F_TABLE("hash", u64, u64, start, 10240, {F});'),
    ("BPF_HASH(start, struct request *);",
     f'BPF_F_TABLE("hash", struct request *, u64, start, 10240, {F});'),
    ("BPF_HASH(infotmp, u64, struct val_t);",
     f'BPF_F_TABLE("hash", u64, struct val_t, infotmp, 10240, {F});'),
    ("BPF_HASH(m, u32, u64, (1 << 12));",
     f'BPF_F_TABLE("hash", u32, u64, m, (1 << 12), {F});'),
    ("BPF_HASH ( spaced ,\n  u32 ,\tu64 )", f'BPF_F_TABLE("hash", u32, u64, spaced, 10240, {F})'),
])
def test_forms(decl: str, expected: str) -> None:
    text, decls = no_prealloc(decl)
    assert text == expected
    assert len(decls) == 1


def test_other_maps_untouched() -> None:
    src = ("BPF_HASH_OF_MAPS(a, \"x\", 4);\nBPF_PERCPU_HASH(b);\nBPF_HISTOGRAM(c);\n"
           "#define MY_BPF_HASH(x) x\nBPF_TABLE(\"hash\", u32, u64, d, 8);\n")
    assert no_prealloc(src) == (src, [])


def test_several_and_context_kept() -> None:
    src = "struct k { u32 a; };\nBPF_HASH(a, struct k);\nint x;\nBPF_HASH(b, u32, u32, 64);\n"
    text, decls = no_prealloc(src)
    assert [d.name for d in decls] == ["a", "b"] == [d.name for d in find_hashes(src)]
    assert text.startswith("struct k { u32 a; };\n") and "\nint x;\n" in text
    assert "BPF_HASH" not in text


@pytest.mark.parametrize("bad", ["BPF_HASH(a, b, c, d, e);", "BPF_HASH(a, u32", "BPF_HASH();"])
def test_bad_declarations(bad: str) -> None:
    with pytest.raises(UsageError):
        no_prealloc(bad)


SRC = """
BPF_HASH(one);
BPF_HASH(two, u32);
BPF_HASH(three, u32, u16);
BPF_HASH(four, u16, u32, 77);
int touch(void *ctx) {
    u64 k = 0; u32 k4 = 0; u16 k2 = 0;
    one.lookup(&k); two.lookup(&k4); three.lookup(&k4); four.lookup(&k2);
    return 0;
}
"""


def _loaded(text: str) -> dict[str, tuple[int, int, int, int]]:
    from bcc import BPF

    b = BPF(text=text.encode())
    try:
        out = {}
        for name in ("one", "two", "three", "four"):
            fd = b[name.encode()].map_fd
            info = bpfsys.map_info(fd)
            out[name] = (info.key_size, info.value_size, info.max_entries, info.map_flags)
        return out
    finally:
        b.cleanup()


@pytest.mark.root
@pytest.mark.skipif(in_test_vm(),
                    reason="covered by the host run (BCC compiles slowly under TCG)")
def test_rewritten_forms_load_with_flag_and_same_shape() -> None:
    """Kernel read-back: same key/value sizes and max_entries, map_flags 0 -> 1."""
    shipped = _loaded(SRC)
    rewritten = _loaded(no_prealloc(SRC)[0])
    assert shipped == {"one": (8, 8, 10240, 0), "two": (4, 8, 10240, 0),
                       "three": (4, 2, 10240, 0), "four": (2, 4, 77, 0)}
    assert rewritten == {k: (*v[:3], bpfsys.F_NO_PREALLOC) for k, v in shipped.items()}
