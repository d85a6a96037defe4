"""Where a key lands in a kernel hash map: its hash, its bucket and its
``map_locked`` slot, computed as ``kernel/bpf/hashtab.c`` does.

A map's hash seed (``hashrnd``) is random unless the map is created with
``BPF_F_ZERO_SEED`` (then 0): only for such a map can user space know which
keys share a bucket.  The hash is Bob Jenkins' lookup3 as ``include/linux/jhash.h``
has it (``jhash2`` over 32-bit words when the key size is a multiple of 4,
``jhash`` over bytes otherwise; for a 4-byte key both give the same value).
"""

from __future__ import annotations

import struct

F_ZERO_SEED = 1 << 6     # BPF_F_ZERO_SEED (include/uapi/linux/bpf.h)
JHASH_INITVAL = 0xDEADBEEF
# HASHTAB_MAP_LOCK_COUNT: the per-CPU map_locked counters of one map, since MAP_LOCKED.
MAP_LOCK_COUNT = 8
_M = 0xFFFFFFFF


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _M; a ^= _rol(c, 4); c = (c + b) & _M  # noqa: E702
    b = (b - a) & _M; b ^= _rol(a, 6); a = (a + c) & _M  # noqa: E702
    c = (c - b) & _M; c ^= _rol(b, 8); b = (b + a) & _M  # noqa: E702
    a = (a - c) & _M; a ^= _rol(c, 16); c = (c + b) & _M  # noqa: E702
    b = (b - a) & _M; b ^= _rol(a, 19); a = (a + c) & _M  # noqa: E702
    c = (c - b) & _M; c ^= _rol(b, 4); b = (b + a) & _M  # noqa: E702
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b; c = (c - _rol(b, 14)) & _M  # noqa: E702
    a ^= c; a = (a - _rol(c, 11)) & _M  # noqa: E702
    b ^= a; b = (b - _rol(a, 25)) & _M  # noqa: E702
    c ^= b; c = (c - _rol(b, 16)) & _M  # noqa: E702
    a ^= c; a = (a - _rol(c, 4)) & _M  # noqa: E702
    b ^= a; b = (b - _rol(a, 14)) & _M  # noqa: E702
    c ^= b; c = (c - _rol(b, 24)) & _M  # noqa: E702
    return c


def jhash2(words: list[int], seed: int) -> int:
    """``jhash2()``: 32-bit words."""
    a = b = c = (JHASH_INITVAL + (len(words) << 2) + seed) & _M
    k = list(words)
    while len(k) > 3:
        a, b, c = (a + k[0]) & _M, (b + k[1]) & _M, (c + k[2]) & _M
        a, b, c = _mix(a, b, c)
        k = k[3:]
    if not k:
        return c
    k += [0] * (3 - len(k))
    return _final((a + k[0]) & _M, (b + k[1]) & _M, (c + k[2]) & _M)


def jhash(data: bytes, seed: int) -> int:
    """``jhash()``: bytes (the last block's bytes little-endian into a, b, c)."""
    a = b = c = (JHASH_INITVAL + len(data) + seed) & _M
    k = data
    while len(k) > 12:
        x, y, z = struct.unpack_from("<III", k)
        a, b, c = _mix((a + x) & _M, (b + y) & _M, (c + z) & _M)
        k = k[12:]
    if not k:
        return c
    x, y, z = struct.unpack("<III", k.ljust(12, b"\0"))
    return _final((a + x) & _M, (b + y) & _M, (c + z) & _M)


def key_hash(key: bytes, seed: int = 0) -> int:
    """``htab_map_hash()`` of ``key`` with seed ``seed`` (0: BPF_F_ZERO_SEED)."""
    if len(key) % 4 == 0:
        return jhash2(list(struct.unpack(f"<{len(key) // 4}I", key)), seed)
    return jhash(key, seed)


def n_buckets(max_entries: int) -> int:
    """``roundup_pow_of_two(max_entries)``."""
    return 1 << max(0, (max_entries - 1).bit_length())


def bucket(h: int, max_entries: int) -> int:
    return h & (n_buckets(max_entries) - 1)


def lock_slot(h: int, max_entries: int, hash_mask: bool) -> int:
    """The map_locked counter a bucket lock of hash ``h`` uses (since
    :data:`~pybpfmap.commits.MAP_LOCKED`): ``h & 7`` before
    :data:`~pybpfmap.commits.HASH_MASK`, which keeps two keys of one bucket on
    one counter by masking with ``min(7, n_buckets - 1)``."""
    mask = MAP_LOCK_COUNT - 1
    if hash_mask:
        mask = min(mask, n_buckets(max_entries) - 1)
    return h & mask


def other_slot_key(held: int, max_entries: int, key_size: int = 4,
                   limit: int = 1 << 16) -> int:
    """A key whose bucket is ``held``'s and whose map_locked slot (before
    HASH_MASK) is not, in a BPF_F_ZERO_SEED map of ``max_entries`` (fewer
    buckets than counters: ``max_entries`` <= 4)."""
    if n_buckets(max_entries) >= MAP_LOCK_COUNT:
        raise ValueError(f"{max_entries} entries make {n_buckets(max_entries)} buckets: "
                         f"one bucket, one slot (at most {MAP_LOCK_COUNT // 2} entries)")

    def h(n: int) -> int:
        return key_hash(n.to_bytes(key_size, "little"), 0)

    h0 = h(held)
    for n in range(1, limit):
        hn = h(n)
        if n != held and bucket(hn, max_entries) == bucket(h0, max_entries) and \
                lock_slot(hn, max_entries, False) != lock_slot(h0, max_entries, False):
            return n
    raise ValueError(f"no key below {limit} shares key {held}'s bucket on another slot")

