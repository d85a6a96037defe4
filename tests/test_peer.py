"""pybpfmap.bench.peer: samples/bpf/map_perf_test's output, parsed and run.

The outputs below are real: captured from map_perf_test built by
vagrant/map-perf-test.sh from Debian's linux-source packages and run under
QEMU TCG with 2 vCPUs (2026-12-01).  The 6.1 ones in the project's bookworm
test VM (6.1.0-50-amd64, linux-source-6.1 6.1.176-1); the 5.10 and 7.3 ones
in throw-away images of the same shape (5.10.0-46-amd64 with 5.10.262-1;
7.3.4+deb13-amd64 with 7.3.4-1~bpo13+1).  No speed thresholds: only what
the parser and the runner must do with any figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pybpfmap import bpfsys, procs
from pybpfmap.bench import peer
from pybpfmap.errors import EnvironmentProblem, UsageError

# ./map_perf_test 15 2 1000 100000 on 6.1.0-50-amd64
REAL_61_ALL_2CPUS = """\
0:hash_map_perf pre-alloc 54221 events per sec
0:percpu_hash_map_perf pre-alloc 43968 events per sec
0:hash_map_perf kmalloc 51538 events per sec
0:percpu_hash_map_perf kmalloc 38895 events per sec
1:hash_map_perf pre-alloc 53143 events per sec
1:percpu_hash_map_perf pre-alloc 41430 events per sec
1:hash_map_perf kmalloc 48914 events per sec
1:percpu_hash_map_perf kmalloc 41195 events per sec
"""

# ./map_perf_test 15 2 1000 100000 on 5.10.0-46-amd64 (one triple per event)
REAL_510_ALL_2CPUS = """\
0:hash_map_perf pre-alloc 385529 events per sec
0:percpu_hash_map_perf pre-alloc 306523 events per sec
0:hash_map_perf kmalloc 284129 events per sec
0:percpu_hash_map_perf kmalloc 121764 events per sec
1:hash_map_perf pre-alloc 403795 events per sec
1:percpu_hash_map_perf pre-alloc 374622 events per sec
1:hash_map_perf kmalloc 237309 events per sec
1:percpu_hash_map_perf kmalloc 120986 events per sec
"""

# ./map_perf_test 15 2 1000 100000 on 7.3.4+deb13-amd64 (the .bpf.c sample)
REAL_73_ALL_2CPUS = """\
0:hash_map_perf pre-alloc 57860 events per sec
0:percpu_hash_map_perf pre-alloc 51978 events per sec
0:hash_map_perf kmalloc 54720 events per sec
0:percpu_hash_map_perf kmalloc 42490 events per sec
1:hash_map_perf pre-alloc 58159 events per sec
1:percpu_hash_map_perf pre-alloc 51923 events per sec
1:hash_map_perf kmalloc 54735 events per sec
1:percpu_hash_map_perf kmalloc 42247 events per sec
"""

# ./map_perf_test 2 2 1000 100000 on 6.1.0-50-amd64: children print as they finish
REAL_61_PERCPU_2CPUS = """\
1:percpu_hash_map_perf pre-alloc 39241 events per sec
0:percpu_hash_map_perf pre-alloc 38971 events per sec
"""

# ./map_perf_test 1 1 1000 100000 on 6.1.0-50-amd64
REAL_61_HASH_1CPU = "0:hash_map_perf pre-alloc 112155 events per sec\n"

# ./map_perf_test 2047 1 1000 20000 on 6.1.0-50-amd64: every test of the sample
REAL_61_EVERY_TEST = """\
0:hash_map_perf pre-alloc 118151 events per sec
0:percpu_hash_map_perf pre-alloc 100499 events per sec
0:hash_map_perf kmalloc 116451 events per sec
0:percpu_hash_map_perf kmalloc 68629 events per sec
0:lru_hash_map_perf pre-alloc 503494 events per sec
0:nocommon_lru_hash_map_perf pre-alloc 484015 events per sec
0:lpm_perf kmalloc 541397 events per sec
0:hash_lookup 14913861 lookups per sec
0:array_lookup 56830547 lookups per sec
0:inner_lru_hash_map_perf pre-alloc 500316 events per sec
0:lru_hash_lookup_perf pre-alloc 249180 events per sec
"""

# ./map_perf_test 4 1 20 1000 on 6.1.0-50-amd64, stdout and stderr (and the
# shell's "Aborted"): hash_map_alloc too small for fill_lpm_trie()'s keys
REAL_61_ASSERT = """\
map_perf_test: /tmp/map-perf-test.nQJPKH/linux-source-6.1/samples/bpf/map_perf_test_user.c:389: \
fill_lpm_trie: Assertion `!r' failed.
Aborted
"""

# stderr of ./map_perf_test 1 1 1000 1000 as uid 65534 on 6.1.0-50-amd64 (exit status 0)
REAL_61_NOT_ROOT_STDERR = """\
libbpf: Error in bpf_object__probe_loading():Operation not permitted(1). Couldn't load \
trivial BPF program. Make sure your kernel supports BPF (CONFIG_BPF_SYSCALL=y) and/or that \
RLIMIT_MEMLOCK is set to big enough value.
libbpf: failed to load object './map_perf_test_kern.o'
ERROR: loading BPF object file failed
"""


def figures(results: list[peer.PeerResult]) -> dict[tuple[int, str], int]:
    return {(r.cpu, r.test.label if r.test else r.name): r.rate for r in results}


@pytest.mark.parametrize("output", [REAL_61_ALL_2CPUS, REAL_510_ALL_2CPUS, REAL_73_ALL_2CPUS],
                         ids=["6.1", "5.10", "7.3"])
def test_parse_all_four_tests_on_two_cpus(output: str) -> None:
    results = peer.parse(output)
    assert len(results) == 8
    assert {(r.cpu, r.test.label) for r in results} == {
        (cpu, t.label) for cpu in (0, 1) for t in peer.PEER_TESTS}
    assert all(r.unit == "events" for r in results)
    # every figure is the number printed on its line, in the order printed
    printed = [int(line.split()[-4]) for line in output.splitlines()]
    assert [r.rate for r in results] == printed


def test_parse_keeps_names_and_allocation_words() -> None:
    f = figures(peer.parse(REAL_61_ALL_2CPUS))
    assert f[(0, "hash/prealloc")] == 54221
    assert f[(0, "hash/no_prealloc")] == 51538        # printed as "kmalloc"
    assert f[(1, "percpu_hash/prealloc")] == 41430
    assert f[(1, "percpu_hash/no_prealloc")] == 41195


def test_parse_cpus_in_any_order() -> None:
    results = peer.parse(REAL_61_PERCPU_2CPUS)
    assert [r.cpu for r in results] == [1, 0]
    assert {r.test.label for r in results} == {"percpu_hash/prealloc"}


def test_parse_other_tests_have_no_peer_test() -> None:
    results = peer.parse(REAL_61_EVERY_TEST)
    assert len(results) == 11
    ours = [r for r in results if r.test]
    assert [r.test.bit for r in ours] == [1, 2, 4, 8]
    lookups = {r.name: r for r in results if r.unit == "lookups"}
    assert set(lookups) == {"hash_lookup", "array_lookup"}
    assert lookups["hash_lookup"].alloc == "" and lookups["hash_lookup"].rate == 14913861
    assert {r.name for r in results if r.test is None and r.alloc == "pre-alloc"} == {
        "lru_hash_map_perf", "nocommon_lru_hash_map_perf", "inner_lru_hash_map_perf",
        "lru_hash_lookup_perf"}


def test_parse_skips_what_is_not_a_result() -> None:
    assert peer.parse(REAL_61_ASSERT) == []
    assert peer.parse(REAL_61_NOT_ROOT_STDERR) == []
    assert peer.parse("") == []


def test_triples_per_sec() -> None:
    (r,) = peer.parse(REAL_61_HASH_1CPU)
    assert r.triples_per_sec(10) == 1121550 and r.triples_per_sec(1) == r.rate


def test_peer_tests_are_the_four_hash_maps() -> None:
    assert sorted(t.bit for t in peer.PEER_TESTS) == [1, 2, 4, 8]
    assert peer.ALL_BITS == 15
    assert all(t.map_type in bpfsys.MAP_TYPES for t in peer.PEER_TESTS)
    assert {(t.map_type, t.prealloc) for t in peer.PEER_TESTS} == {
        (m, p) for m in ("hash", "percpu_hash") for p in (True, False)}
    assert len({t.syscall for t in peer.PEER_TESTS}) == 4


# Two ways the sample defines its programs, in text written for this test:
# a plain kprobe function (up to 6.1) and a BPF_KSYSCALL() one (6.12 on).
OLD_STYLE = """
SEC("kprobe/" SYSCALL(sys_getuid))
int stress_hmap(struct pt_regs *ctx)
{
	u32 key = 1;
	long one = 1;

	bpf_map_update_elem(&m, &key, &one, BPF_ANY);
	if (bpf_map_lookup_elem(&m, &key))
		bpf_map_delete_elem(&m, &key);
	return 0;
}
"""
NEW_STYLE = """
SEC("ksyscall/getuid")
int BPF_KSYSCALL(stress_hmap)
{
	u32 key = 1;
	long one = 1;
	int i;

	for (i = 0; i < 10; i++) {
		bpf_map_update_elem(&m, &key, &one, BPF_ANY);
		if (bpf_map_lookup_elem(&m, &key))
			bpf_map_delete_elem(&m, &key);
	}
	return 0;
}
"""


def test_triples_per_event_from_the_source() -> None:
    assert peer.triples_per_event(OLD_STYLE) == 1
    assert peer.triples_per_event(NEW_STYLE) == 10


def test_triples_per_event_refuses_to_guess() -> None:
    with pytest.raises(EnvironmentProblem, match="no function"):
        peer.triples_per_event(NEW_STYLE, "stress_percpu_hmap")
    twice = NEW_STYLE.replace("return 0;", "bpf_map_update_elem(&m, &key, &one, 0);\n\treturn 0;")
    with pytest.raises(EnvironmentProblem, match="one update"):
        peer.triples_per_event(twice)


def test_build_load_needs_a_build(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="no map_perf_test build"):
        peer.PeerBuild.load(tmp_path)
    (tmp_path / "BUILD_INFO").write_text("release=6.1.0-50-amd64\n")
    with pytest.raises(EnvironmentProblem, match="lacks source_version"):
        peer.PeerBuild.load(tmp_path)


def test_build_load(tmp_path: Path) -> None:
    (tmp_path / "BUILD_INFO").write_text(
        "release=6.12.117+deb13-amd64\nsource_version=6.12.117-1\nlayout=bpf\n"
        "bpf_source=map_perf_test.bpf.c\nno_prealloc_allocator=bpf_mem_alloc\n")
    (tmp_path / "map_perf_test.bpf.c").write_text(
        "\n".join(NEW_STYLE.replace("stress_hmap", t.program) for t in peer.PEER_TESTS))
    b = peer.PeerBuild.load(tmp_path)
    assert (b.release, b.source_version, b.no_prealloc_allocator) == (
        "6.12.117+deb13-amd64", "6.12.117-1", "bpf_mem_alloc")
    assert b.triples_per_event == {1: 10, 2: 10, 4: 10, 8: 10}


@pytest.mark.parametrize(("args", "param"), [
    ((0, 1, 1000, 1000), "test_bits"),          # 0: every test, LRU and LPM ones too
    ((16, 1, 1000, 1000), "test_bits"),
    ((1, 0, 1000, 1000), "nr_cpus"),
    ((1, 4097, 1000, 1000), "nr_cpus"),
    ((1, 1, 1000, 0), "max_cnt"),
    ((4, 1, 33, 1000), "num_map_entries"),      # fill_lpm_trie()'s 33 keys + 1 CPU
])
def test_run_refuses_bad_arguments(args: tuple[int, int, int, int], param: str) -> None:
    with pytest.raises(UsageError) as e:
        peer.run("/nonexistent", *args, timeout=10)
    assert e.value.param == param


def fake_binary(tmp_path: Path, script: str) -> Path:
    """A stand-in map_perf_test (a shell script) in tmp_path."""
    path = tmp_path / peer.BINARY
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return tmp_path


def test_run_parses_what_the_binary_prints(tmp_path: Path) -> None:
    d = fake_binary(tmp_path, f"cat <<'EOF'\n{REAL_61_HASH_1CPU}EOF\n")
    (r,) = peer.run(d, 1, 1, 1000, 100000, timeout=30)
    assert (r.cpu, r.test.label, r.rate) == (0, "hash/prealloc", 112155)


def test_run_passes_the_arguments(tmp_path: Path) -> None:
    d = fake_binary(tmp_path, 'echo "$0 $*" >&2; exit 3\n')
    with pytest.raises(EnvironmentProblem, match=f"exit status 3: {d}/map_perf_test 1 1 40 7"):
        peer.run(d, 1, 1, 40, 7, timeout=30)


def test_run_error_with_status_zero_is_a_failure(tmp_path: Path) -> None:
    d = fake_binary(tmp_path, f"cat >&2 <<'EOF'\n{REAL_61_NOT_ROOT_STDERR}EOF\nexit 0\n")
    with pytest.raises(EnvironmentProblem, match="ERROR: loading BPF object file failed "
                       r"\(libbpf: Error in bpf_object__probe_loading"):
        peer.run(d, 1, 1, 1000, 1000, timeout=30)


def test_run_abort_is_a_failure(tmp_path: Path) -> None:
    assertion = REAL_61_ASSERT.splitlines()[0]
    d = fake_binary(tmp_path, f"cat >&2 <<'EOF'\n{assertion}\nEOF\nkill -ABRT $$\n")
    with pytest.raises(EnvironmentProblem, match="killed by signal 6: .*Assertion `!r' failed"):
        peer.run(d, 4, 1, 1000, 1000, timeout=30)


def test_run_missing_results_are_a_failure(tmp_path: Path) -> None:
    d = fake_binary(tmp_path, f"cat <<'EOF'\n{REAL_61_HASH_1CPU}EOF\n")
    with pytest.raises(EnvironmentProblem, match="printed 0 of 1 results"):
        peer.run(d, 2, 1, 1000, 1000, timeout=30)


def test_run_timeout_kills_the_children(tmp_path: Path) -> None:
    # like the sample: the parent forks a child and waits for it
    d = fake_binary(tmp_path, f"sleep 600 &\necho $! > {tmp_path}/child\nwait\n")
    with pytest.raises(EnvironmentProblem, match="still running after 1 s"):
        peer.run(d, 1, 1, 1000, 1000, timeout=1)
    child = int((tmp_path / "child").read_text())
    try:
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")  # dead; at most waiting for its new parent to reap it


def test_run_timeout_with_a_stuck_child_says_so(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A group still alive after SIGKILL (a task stuck in the kernel; faked
    here) is not reported as simply killed."""
    real_kill = procs.Child.kill

    def stuck(self: procs.Child, wait: float = procs.KILL_WAIT) -> None:
        real_kill(self, wait)  # the fake must not leave the child behind
        raise procs.StuckProcess(f"process group {self.pid}: 1 process(es) ({self.pid}) "
                                 f"alive {wait:g} s after SIGKILL (stuck in the kernel?)")

    monkeypatch.setattr(procs.Child, "kill", stuck)
    d = fake_binary(tmp_path, "sleep 600 &\nwait\n")
    with pytest.raises(EnvironmentProblem, match=r"still running after 1 s; process group "
                       r"\d+: .* after SIGKILL \(stuck in the kernel\?\)"):
        peer.run(d, 1, 1, 1000, 1000, timeout=1)


def test_run_needs_the_binary(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="missing or not executable"):
        peer.run(tmp_path, 1, 1, 1000, 1000, timeout=30)


@pytest.fixture
def installed_build() -> peer.PeerBuild:
    """The build vagrant/map-perf-test.sh made for the running kernel (test VM images)."""
    if not (peer.PEER_DIR / "BUILD_INFO").is_file():
        pytest.skip(f"no map_perf_test build in {peer.PEER_DIR} (the test-VM image has one)")
    build = peer.PeerBuild.load()
    if build.release != os.uname().release:
        pytest.skip(f"{peer.PEER_DIR} was built for {build.release}, "
                    f"not the running {os.uname().release}")
    return build


def test_installed_build_reads_its_source(installed_build: peer.PeerBuild) -> None:
    assert set(installed_build.triples_per_event.values()) <= {1, 10}
    assert len(set(installed_build.triples_per_event.values())) == 1
    assert installed_build.no_prealloc_allocator in ("kmalloc", "bpf_mem_alloc")


@pytest.mark.root
@pytest.mark.kprobes
def test_run_installed_build(installed_build: peer.PeerBuild) -> None:
    results = peer.run(installed_build.path, peer.ALL_BITS, 1, 1000, 2000, timeout=300)
    assert sorted(r.test.bit for r in results) == [1, 2, 4, 8]
    assert all(r.cpu == 0 and r.rate > 0 for r in results)
