"""pybpfmap advise: the recommendation from its pieces, and the command here."""

from __future__ import annotations

import json

import pytest

from pybpfmap import advise, progtypes
from pybpfmap.advise import Advice, LockPath, ModeAnswer
from pybpfmap.maps import MapSpec
from tests.helpers import cmd, pybpfmap_argv


def _advice(pre: ModeAnswer, lazy: ModeAnswer, prealloc: bool = True) -> Advice:
    a = Advice("5.10.0", "vm:x", "5.7-5.10", "hash", 4, 896, 32768, prealloc,
               ["kprobe", "perf_event"], [pre, lazy])
    advise.decide(a)
    return a


def _mode(prealloc: bool, empty: int, ns: float, *, deadlock: bool = False,
          refused_to: str = "") -> ModeAnswer:
    loads = [progtypes.LoadResult("kprobe", True),
             progtypes.LoadResult("perf_event", not refused_to, "EINVAL" if refused_to else None)]
    paths = [LockPath("allocator", "DEADLOCK" if deadlock else "PASS", True)]
    return ModeAnswer(prealloc, memory_empty=empty, memory_full=30 << 20, ns_per_triple=ns,
                      loads=loads, lock_paths=paths)


def test_a_refused_program_type_makes_a_mode_unsafe() -> None:
    a = _advice(_mode(True, 30 << 20, 100), _mode(False, 1 << 19, 110, refused_to="perf_event"))
    assert a.recommendation == "prealloc" and not a.unsafe
    assert any("perf_event" in r and "no_prealloc: unsafe" in r for r in a.reasons), a.reasons
    b = _advice(_mode(True, 30 << 20, 100), _mode(False, 1 << 19, 110, refused_to="perf_event"),
                prealloc=False)
    assert b.unsafe and advise.exit_status([a, b]) == advise.EXIT_UNSAFE


def test_a_measured_deadlock_makes_a_mode_unsafe_and_the_exit_status_says_so() -> None:
    a = _advice(_mode(True, 30 << 20, 100, deadlock=True), _mode(False, 1 << 19, 110))
    assert a.unsafe and a.recommendation == "no_prealloc"
    assert advise.exit_status([a]) == advise.EXIT_UNSAFE


def test_no_prealloc_only_when_it_saves_memory_and_costs_little_speed() -> None:
    cheap = _advice(_mode(True, 30 << 20, 100), _mode(False, 1 << 19, 110))
    slow = _advice(_mode(True, 30 << 20, 100), _mode(False, 1 << 19, 400))
    small = _advice(_mode(True, 2 << 20, 100), _mode(False, 1 << 20, 110))
    assert cheap.recommendation == "no_prealloc"
    assert slow.recommendation == small.recommendation == "prealloc"
    assert advise.exit_status([cheap, slow, small]) == advise.EXIT_SAFE


def test_a_skipped_lock_path_is_the_eras_prediction_marked_as_such() -> None:
    a = Advice("5.10.0-46-amd64", "vm:x", "", "hash", 4, 8, 1024, True, ["kprobe"],
               [ModeAnswer(True), ModeAnswer(False)])
    advise.add_lock_paths(a, [])
    for m in a.modes:
        assert [lp.scenario for lp in m.lock_paths] == list(advise.LOCK_SCENARIOS)
        assert all(not lp.measured and lp.said.startswith(advise.PREDICTED)
                   for lp in m.lock_paths)
    # 5.10 has no map_locked: a nested update under the bucket lock is an AA deadlock
    reentry = a.mode(True).lock_paths[1]
    assert reentry.locks_up, reentry


@pytest.mark.root
def test_advise_here_measures_both_modes_and_asks_the_verifier() -> None:
    out = cmd(pybpfmap_argv("advise", "--type", "hash", "--value-size", "600",
                            "--max-entries", "4096", "--prog", "tracepoint,xdp",
                            "--skip", "speed", "--json"),
              expect=(advise.EXIT_SAFE, advise.EXIT_UNSAFE))
    assert out.returncode in (advise.EXIT_SAFE, advise.EXIT_UNSAFE), out.stderr
    (rec,) = advise.load(json.loads(out.stdout))
    assert [m.prealloc for m in rec.modes] == [True, False]
    pre, lazy = rec.modes
    elements = 4096 * (48 + 8 + 600)
    assert pre.memory_empty >= elements and lazy.memory_empty < pre.memory_empty / 2
    assert lazy.memory_full > lazy.memory_empty
    assert [r.prog for r in pre.loads] == ["tracepoint", "xdp"]
    assert all(r.loaded for r in pre.loads), pre.loads  # preallocated maps load everywhere
    assert set(rec.skipped) == {"speed", "stress"}
    assert rec.recommendation in ("prealloc", "no_prealloc") and rec.reasons
    assert out.returncode == advise.exit_status([rec])


def test_custom_stress_kind_round_trips() -> None:
    from pybpfmap.stress import kinds

    spec = MapSpec("percpu_hash", False, 8, 896, 32768)
    kind = kinds.custom(spec)
    (back,) = kinds.select([kind.name])
    assert back.spec == spec and back.name == kind.name
