"""The command line: every bad input gives one clear line, a non-zero exit, no
traceback, and leaves nothing loaded."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.bpf_objects import leftovers, loaded_ids
from tests.helpers import bpftool, kernel_config


def bpftool_ids() -> dict[str, set[int]]:
    """The IDs bpftool lists: the ground truth next to our own bpf(2) walk."""
    return {kind + "s": {obj["id"] for obj in bpftool(kind, "list") or []}
            for kind in ("map", "prog")}


@pytest.mark.root
def test_bpftool_and_our_walk_agree():
    """loaded_ids() (bpf(2) GET_NEXT_ID) sees what bpftool sees."""
    from pybpfmap.maps import MapSpec

    with MapSpec("hash").create() as m:
        map_id = m.kernel_view()["id"]
        assert map_id in loaded_ids()["maps"]
        assert map_id in bpftool_ids()["maps"]
    assert map_id not in loaded_ids()["maps"]


# (arguments, exit status, words the one-line error must contain)
BAD_INPUT = [
    (["maps", "--type", "lru_hash", "--no-prealloc"], 1, ["--no-prealloc", "ENOTSUPP (524"]),
    (["maps", "--type", "lru_percpu_hash", "--no-prealloc"], 1, ["--no-prealloc", "ENOTSUPP"]),
    (["maps", "--type", "hash", "--max-entries", "0"], 1, ["--max-entries", "EINVAL (22"]),
    (["maps", "--type", "hash", "--key-size", "0"], 1, ["--key-size", "EINVAL"]),
    (["maps", "--type", "percpu_hash", "--value-size", "0"], 1, ["--value-size", "EINVAL"]),
    (["maps", "--type", "percpu_hash", "--value-size", "40000"], 1, ["--value-size", "E2BIG (7"]),
    (["maps", "--type", "hash", "--value-size", "100000000"], 1,
     ["--key-size/--value-size", "E2BIG"]),
    (["maps", "--type", "hash", "--max-entries", "3000000000"], 1, ["--max-entries", "E2BIG"]),
    (["maps", "--type", "hash", "--prealloc", "--max-entries", "134217728",
      "--value-size", "4096"], 1, ["--max-entries", "ENOMEM (12", "preallocating"]),
    (["maps", "--type", "hash", "--map-flags", "0x80000000"], 1, ["--map-flags", "EINVAL"]),
    (["maps", "--type", "hash", "--map-flags", "0x2"], 1,
     ["--map-flags", "BPF_F_NO_COMMON_LRU"]),
    (["maps", "--type", "nosuch"], 2, ["--type", "invalid choice"]),
    (["maps", "--max-entries", "abc"], 2, ["--max-entries", "invalid int"]),
    (["maps", "--key-size", "-1"], 2, ["--key-size", "not a 32-bit unsigned integer"]),
    (["maps", "--max-entries", "5000000000"], 2, ["--max-entries"]),
    (["maps", "--prealloc", "--no-prealloc"], 2, ["not allowed with"]),
    (["nosuchcommand"], 2, ["invalid choice"]),
]


@pytest.mark.root
@pytest.mark.parametrize("args,status,words", BAD_INPUT,
                         ids=[" ".join(a) for a, _, _ in BAD_INPUT])
def test_bad_input_is_explained_and_leaves_nothing(pybpfmap, args, status, words):
    before = loaded_ids()
    result = pybpfmap(*args, expect=status)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0]
    assert leftovers(before) == {}


@pytest.mark.root
def test_unprivileged_user_is_told_to_use_sudo():
    """Drop root in a forked child (the checkout may be unreadable for other
    users, so no new interpreter) and run the CLI there."""
    from pybpfmap.cli import build_parser, main

    build_parser()  # import every command module while still root
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, run the command, report through the pipe
        status = 99
        sys.stderr = os.fdopen(write, "w")  # pytest has replaced sys.stderr
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            status = main(["maps", "--type", "hash"])
        except BaseException:
            import traceback

            traceback.print_exc()  # shows in the assertion message below
        finally:
            sys.stderr.flush()
            os._exit(status)
    os.close(write)
    with os.fdopen(read) as f:
        stderr = f.read()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 1, stderr
    assert "Traceback" not in stderr
    assert "EPERM" in stderr and "sudo" in stderr


@pytest.mark.root
def test_maps_json_shows_prealloc_charging_up_front(pybpfmap):
    result = pybpfmap("maps", "--json", "--type", "hash", "percpu_hash", "--max-entries", "20000")
    records = json.loads(result.stdout)
    assert len(records) == 4
    by = {(r["type"], r["prealloc"]): r for r in records}
    for r in records:
        assert r["map_flags"] == (0 if r["prealloc"] else 1)
        assert r["new_key_when_full"] == "E2BIG"
        assert r["entries_full"] == 20000
        assert set(r["memory"]) == {"empty", "full", "drained"}
        assert r["where"] == "host" and r["kernel_release"] == os.uname().release
    for t in ("hash", "percpu_hash"):
        pre, no = by[(t, True)]["memory"], by[(t, False)]["memory"]
        assert pre["empty"]["memlock"] == pre["full"]["memlock"]
        if by[(t, False)]["memlock_is_estimate"]:
            continue  # pre-v6.4 kernel: fdinfo shows an estimate (test_maps.py says so)
        assert pre["empty"]["memlock"] > 2 * no["empty"]["memlock"]
        assert no["full"]["memlock"] > no["empty"]["memlock"]


@pytest.mark.root
def test_memory_cgroup_charges_at_least_the_element_area(pybpfmap):
    """A preallocated hash of N entries allocates N elements of 48 + 8 + 8 bytes
    up front: the memory cgroup's kernel-memory charge must be at least that,
    and a NO_PREALLOC map's must grow when it is filled."""
    from pybpfmap import memcg

    if memcg.charges_maps() is not True:
        pytest.skip(f"no memory cgroup figures here: {memcg.unavailable_reason() or ''} "
                    "(or the kernel does not charge BPF maps to it)")
    n = 50000
    result = pybpfmap("maps", "--json", "--type", "hash", "--max-entries", str(n))
    pre, no = json.loads(result.stdout)
    assert pre["memory"]["empty"]["kernel"] >= n * (48 + 8 + 8), pre
    assert no["memory"]["full"]["kernel"] - no["memory"]["empty"]["kernel"] >= n * 48, no
    assert pre["method"].startswith("memory cgroup v")
    assert pre["memory"]["drained"]["peak"] >= pre["memory"]["full"]["kernel"]


@pytest.mark.root
def test_maps_default_skips_lru_no_prealloc_with_reason(pybpfmap):
    result = pybpfmap("maps", "--json", "--max-entries", "100")
    records = json.loads(result.stdout)
    assert len(records) == 8
    skipped = [r for r in records if r["skipped"]]
    assert {(r["type"], r["prealloc"]) for r in skipped} == {("lru_hash", False),
                                                             ("lru_percpu_hash", False)}
    assert all("preallocated" in r["skipped"] for r in skipped)


@pytest.mark.root
def test_info_json_tells_the_truth(pybpfmap):
    """Checked against what the kernel was built with (its config) and what the
    headers were built for (their utsrelease.h), not against info's own tests."""
    (data,) = json.loads(pybpfmap("info", "--json").stdout)  # a list, with --kernel or not
    for key in ("kernel_release", "kprobes", "in_vm", "headers", "unlock_symbols"):
        assert key in data
    assert data["kernel_release"] == os.uname().release
    config = kernel_config()
    if config is not None:  # kprobes need both, and then BCC can attach kprobes
        built = config.get("CONFIG_KPROBES") == config.get("CONFIG_KPROBE_EVENTS") == "y"
        assert data["kprobes"] is built, data["kprobes_reason"]
    if not data["kprobes"]:
        assert data["unlock_symbols"] == []
        assert "CONFIG_KPROBES" in data["kprobes_reason"]
    assert data["headers"] is not None, "info must set up headers as root"
    uts = Path(data["headers"]["build"], "include/generated/utsrelease.h").read_text()
    built_for = uts.split('"')[1]  # #define UTS_RELEASE "6.1.0-57-amd64"
    assert data["headers"]["matches_kernel"] is (built_for == os.uname().release), built_for
