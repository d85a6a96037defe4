"""maps --from-bpf / --memory-max: where a map runs out of memory."""

from __future__ import annotations

import json

import pytest

from pybpfmap import enomem, mapmemory
from tests.helpers import cmd, pybpfmap_argv

pytestmark = [pytest.mark.root]

N = 20000


def _records(*args: str) -> list[enomem.FillRecord]:
    out = cmd(pybpfmap_argv("maps", *args, "--json"), timeout=900)
    return enomem.load(json.loads(out.stdout))


def test_from_bpf_counts_every_insert() -> None:
    recs = _records("--from-bpf", "--types", "hash", "--max-entries", str(N))
    assert [(r.type, r.prealloc) for r in recs] == [("hash", True), ("hash", False)]
    for r in recs:
        f = r.fill
        assert f.attempts == N and f.inserted + sum(f.errors.values()) == N, f
        assert f.entries_after == f.inserted
        assert r.batch is not None and r.batch.asked == N
    pre = recs[0]
    assert pre.fill.inserted == N and not pre.fill.errors   # preallocated: room for all


def test_memory_max_fails_the_preallocated_map_at_creation_only() -> None:
    chosen, why = mapmemory.choose("memcg")
    if not chosen:
        pytest.skip(f"no memory limit for maps here: {why}")
    recs = _records("--memory-max", "auto", "--types", "hash", "--max-entries", str(N))
    pre, lazy = recs
    assert pre.create_error and pre.create_error.startswith("ENOMEM"), pre
    assert pre.fill is None and pre.batch_create_error.startswith("ENOMEM")
    assert lazy.create_error is None and lazy.fill is not None
    # The NO_PREALLOC map grows until the limit: its atomic allocations either
    # fail (ENOMEM) or are let over the limit (5.11-6.0 charge GFP_ATOMIC by force).
    enomem_count = lazy.fill.errors.get("ENOMEM", 0)
    over = lazy.peak is not None and lazy.peak > lazy.memory_max
    assert enomem_count > 0 or over, lazy
    if enomem_count:
        assert lazy.fill.inserted < N and lazy.cgroup_events.get("max", 0) > 0, lazy


def test_a_limit_where_maps_are_not_charged_is_refused_in_one_line() -> None:
    chosen, _ = mapmemory.choose("memcg")
    if chosen:
        pytest.skip("this kernel charges maps to the memory cgroup: a limit works here")
    out = cmd(pybpfmap_argv("maps", "--memory-max", "1M", "--types", "hash"), expect=2,
              timeout=300)
    assert "--memory-max" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("bad", ["0", "-1M", "lots"])
def test_a_bad_memory_max_is_one_usage_line(bad: str) -> None:
    out = cmd(pybpfmap_argv("maps", "--memory-max", bad), expect=2, timeout=60)
    assert "--memory-max" in out.stderr and "Traceback" not in out.stderr
