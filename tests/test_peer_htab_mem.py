"""pybpfmap bench --peer htab-mem: the selftests' ``bench htab-mem`` built on the
host (pybpfmap.vm.peers, vagrant/htab-mem-bench.sh), run and parsed
(pybpfmap.bench.peer_htab_mem), beside pybpfmap's own records
(pybpfmap.bench.compare_htab_mem, the table)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pybpfmap.bench import compare_htab_mem, peer_htab_mem, table
from pybpfmap.bench.machine import Machine
from pybpfmap.bench.peer_htab_mem import HtabMemOptions
from pybpfmap.bench.record import BenchRecord, HtabMemPeer, Memory, Mode, Spread, load
from pybpfmap.errors import EnvironmentProblem, UsageError
from pybpfmap.records import to_json
from pybpfmap.vm import peers
from tests.helpers import cmd, pybpfmap_argv

# What bench_htab_mem.c printed here (bench -p 2 -d 2 -w 1 -a htab-mem
# --use-case add_del_on_diff_cpu), on a host whose memory cgroup is on v1.
STDOUT = """\
Setting up benchmark 'htab-mem'...
Benchmark 'htab-mem' started.
Iter   0 (603.034us): per-prod-op    3.45k/s, memory usage    0.00MiB
Iter   1 (-537.595us): per-prod-op    3.58k/s, memory usage    0.00MiB
Iter   2 (506.693us): per-prod-op    3.64k/s, memory usage    0.00MiB
Iter   3 (-529.590us): per-prod-op    3.73k/s, memory usage    0.00MiB
Summary: per-prod-op    3.65 \u00b1    0.08k/s, memory usage    0.00 \u00b1    0.00MiB, \
peak memory usage    0.00MiB
"""
STDERR = "no memory.current\n" * 4 + "no memory.peak\n"


def fake_build(tmp_path: Path, release: str = "6.1.0-50-amd64",
               source_version: str = "6.12.117-1") -> peers.HtabMemBuild:
    """A build directory as the recipe leaves it, with a bench that is a shell script."""
    d = tmp_path / f"{peers.HTAB_MEM}-{release}-{peers.build_key(source_version, release)}"
    d.mkdir()
    (d / "bench").write_text("#!/bin/sh\nexit 0\n")
    (d / "bench").chmod(0o755)
    (d / "htab_mem_bench.c").write_text("#define OP_BATCH 64\n")
    (d / "BUILD_INFO").write_text(
        f"release={release}\nsource_package=linux-source-6.12\n"
        f"source_version={source_version}\nuse_cases=overwrite batch_add_batch_del "
        "add_del_on_diff_cpu\noptions=value-size use-case preallocated\n"
        "max_entries=MAX(8192, 64 * env.nr_cpus)\nlibbpf=1.5\n")
    return peers.HtabMemBuild.load(d)


def test_parse_reads_samples_summary_and_what_it_could_not_read() -> None:
    r = peer_htab_mem.parse(STDOUT, STDERR, HtabMemOptions(use_case="add_del_on_diff_cpu",
                                                            producers=2, duration=2))
    assert [s.index for s in r.samples] == [0, 1, 2, 3]
    assert [s.warmup for s in r.samples] == [True, False, False, False]
    assert r.samples[1].slip_us == pytest.approx(-537.595)
    assert r.summary.kops_per_producer == pytest.approx(3.65)
    assert r.summary.kops_stddev == pytest.approx(0.08)
    assert r.unavailable == ("memory.current", "memory.peak")
    assert not r.memory_known and not r.peak_known
    with pytest.raises(EnvironmentProblem, match="printed no summary .no such use-case"):
        peer_htab_mem.parse("Setting up benchmark 'htab-mem'...\n",
                            "no such use-case: nope\n", HtabMemOptions())


def test_options_refuse_what_the_bench_would(tmp_path: Path) -> None:
    build = fake_build(tmp_path)
    HtabMemOptions(use_case="add_del_on_diff_cpu", producers=2).check(build)
    for bad, param in ((HtabMemOptions(use_case="nope"), "use_case"),
                       (HtabMemOptions(use_case="add_del_on_diff_cpu", producers=3),
                        "producers"),
                       (HtabMemOptions(value_size=4097), "value_size"),
                       (HtabMemOptions(duration=0), "duration")):
        with pytest.raises(UsageError) as e:
            bad.check(build)
        assert e.value.param == param
    argv = HtabMemOptions(use_case="overwrite", producers=2, preallocated=True,
                          affinity=True).argv(build.binary)
    assert argv[1:] == ["-p", "2", "-d", "5", "-w", "1", "-a", "htab-mem", "--use-case",
                        "overwrite", "--value-size", "8", "--preallocated"]


def test_build_record_and_locate(tmp_path: Path) -> None:
    build = fake_build(tmp_path)
    assert build.op_batch == 64
    assert build.max_entries(2) == 8192 and build.max_entries(200) == 12800
    assert peers.locate("6.1.0-50-amd64", tmp_path).path == build.path
    with pytest.raises(EnvironmentProblem, match="no htab-mem build for kernel 6.12"):
        peers.locate("6.12.0-1-amd64", tmp_path)
    # a build the current recipe did not make (another key) is not found
    stale = tmp_path / f"{peers.HTAB_MEM}-6.12.0-1-amd64-{'0' * 16}"
    shutil.copytree(build.path, stale)
    with pytest.raises(EnvironmentProblem):
        peers.locate("6.12.0-1-amd64", tmp_path)


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="no dpkg to compare versions with")
@pytest.mark.parametrize("a, b", [
    ("6.12.117-1", "6.12.57-1"), ("7.3~rc7-1~exp1", "7.3-1"), ("7.3.4-1~bpo13+1", "7.3.4-1"),
    ("1:5.10-1", "6.1-1"), ("6.1.176-1", "6.1.176-1"), ("6.1a-1", "6.1-1"), ("6.1-1", "6.1")])
def test_debian_versions_sort_as_dpkg_sorts_them(a: str, b: str) -> None:
    def dpkg(op: str) -> bool:
        return subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0

    want = -1 if dpkg("lt") else 1 if dpkg("gt") else 0
    assert peers.compare_versions(a, b) == want
    assert peers.compare_versions(b, a) == -want


def test_choose_source_prefers_the_kernels_own_series_then_releases(tmp_path: Path) -> None:
    def src(package: str, version: str) -> peers.KernelSource:
        return peers.KernelSource(tmp_path / f"{package}.tar.xz", version)

    old, s612, s73rc, s73 = (src("linux-source-6.1", "6.1.176-1"),
                             src("linux-source-6.12", "6.12.117-1"),
                             src("linux-source-7.3", "7.3~rc7-1~exp1"),
                             src("linux-source-7.3", "7.3.4-1~bpo13+1"))
    assert peers.choose_source([old, s612, s73], "6.12.57+deb13-amd64") == s612
    assert peers.choose_source([old, s612, s73], "6.1.0-50-amd64") == s73   # newest
    assert peers.choose_source([old, s612, s73rc], "6.1.0-50-amd64") == s612  # no -rc
    assert peers.choose_source([old], "6.1.0-50-amd64") is None   # 6.1 has no bench


def test_find_sources_reads_each_packages_version(tmp_path: Path) -> None:
    import gzip

    root = tmp_path / "linux-source-6.12_6.12.117-1"
    (root / "usr/src").mkdir(parents=True)
    (root / "usr/src/linux-source-6.12.tar.xz").write_bytes(b"")
    doc = root / "usr/share/doc/linux-source-6.12"
    doc.mkdir(parents=True)
    with gzip.open(doc / "changelog.Debian.gz", "wt") as f:
        f.write("linux (6.12.117-1) trixie-security; urgency=high\n")
    (tmp_path / "empty").mkdir()
    found = peers.find_sources([str(tmp_path / "*")])
    assert [(s.package, s.version, s.series) for s in found] == [
        ("linux-source-6.12", "6.12.117-1", (6, 12))]


REDUCE = """\
static const struct argp_child bench_parsers[] = {
	{ &bench_ringbufs_argp, 0, "Ring buffers benchmark", 0 },
	{ &bench_htab_mem_argp, 0, "hash map memory benchmark", 0 },
	{ &bench_trigger_batch_argp, 0, "BPF triggering benchmark", 0 },
	{},
};

static const struct bench *benchs[] = {
	&bench_count_global,
	&bench_htab_mem,
	&bench_trig_syscall_count,
};
int main(void) { return 0; }
"""


@pytest.mark.skipif(shutil.which("awk") is None, reason="no awk")
def test_the_recipe_cuts_bench_c_to_htab_mem_and_refuses_a_layout_it_does_not_know(
        tmp_path: Path) -> None:
    src, out = tmp_path / "bench.c", tmp_path / "bench_reduced.c"
    src.write_text(REDUCE)
    script = f". {peers.RECIPE}; _hmb_reduce {src} {out}"
    assert subprocess.run(["sh", "-c", script]).returncode == 0
    kept = out.read_text()
    assert "&bench_htab_mem_argp," in kept and "&bench_htab_mem," in kept
    assert "ringbufs" not in kept and "trig_syscall" not in kept and "count_global" not in kept
    assert "int main(void)" in kept
    src.write_text(REDUCE.replace("&bench_htab_mem,", "&bench_other,"))
    assert subprocess.run(["sh", "-c", script]).returncode != 0


def record(prealloc: bool, cpus: int, *, mib: int = 1) -> BenchRecord:
    mach = Machine("6.1.0-50-amd64", "vm:bookworm", None, "none", 2, 2, 1, False, True)
    r = BenchRecord(Mode.SYSCALL, "hash", prealloc, 8192, cpus, mach,
                    triples_per_event=21, map_max_entries=8192 + 64, trigger="tracepoint",
                    events_per_sec=Spread.of([64000.0, 64000.0]),
                    ns_per_triple=Spread.of([300.0, 300.0]),
                    memory=Memory(0, 0, 0, False, kernel_after=mib << 20, peak=2 * mib << 20))
    return r


def test_the_record_carries_both_tools_figures_in_htab_mems_units(tmp_path: Path) -> None:
    build = fake_build(tmp_path)
    run = peer_htab_mem.parse(STDOUT.replace("0.00MiB, peak", "1.50MiB, peak"), "",
                              HtabMemOptions(use_case="batch_add_batch_del"))
    r = record(False, 1)
    r.htab_mem = HtabMemPeer(
        build=build.describe(), op_batch=64, map_calls_per_event=63,
        pybpfmap_kops_per_producer=compare_htab_mem._kops(r, 64),
        pybpfmap_memory_mib=1.0, pybpfmap_peak_mib=2.0, runs=[run],
        skipped=["add_del_on_diff_cpu: needs an even number of producers, not 1"],
        differences=compare_htab_mem.differences(r, build))
    # 64,000 events/s x 63 map calls / 64 per op = 63 k ops/s
    assert r.htab_mem.pybpfmap_kops_per_producer == pytest.approx(63.0)
    assert r.htab_mem.ratio(run) == pytest.approx(63.0 / 3.65, abs=0.001)
    back = load(json.loads(json.dumps(to_json([r]))))[0]
    assert back.htab_mem == r.htab_mem
    text = table.render_text([back])
    assert "htab-mem beside pybpfmap" in text
    row = next(x for x in text.splitlines() if "batch_add_batch_del" in x)
    assert "3.65 ± 0.08" in row and "63.00" in row and "17.26x" in row
    assert "not run: add_del_on_diff_cpu: needs an even number" in text


def test_htab_mem_takes_hash_maps_only() -> None:
    p = cmd(pybpfmap_argv("bench", "--peer", "htab-mem", "--types", "percpu_hash"),
            expect=2)
    assert p.stderr.strip().splitlines() == [
        "pybpfmap bench: error: --types: htab-mem's map is a hash map: use --types hash"]
    assert "Traceback" not in p.stderr


def _host_build() -> peers.HtabMemBuild | None:
    try:
        return peers.locate(os.uname().release, peers.peers_dir())
    except EnvironmentProblem:
        return None


@pytest.mark.root
def test_the_bench_runs_here_and_its_figures_are_read(kernel) -> None:
    """A real run, where a build for this kernel is cached (``pybpfmap bench
    --peer htab-mem`` makes one; CI does not build it, to keep its time)."""
    build = _host_build()
    if build is None:
        pytest.skip(f"no htab-mem build for kernel {os.uname().release} in "
                    f"{peers.peers_dir()} (pybpfmap bench --peer htab-mem builds it)")
    r = peer_htab_mem.run(build, HtabMemOptions(use_case="batch_add_batch_del",
                                                duration=1, affinity=True))
    assert r.summary.kops_per_producer > 0
    assert [s.warmup for s in r.samples][:1] == [True]
    assert r.max_entries == build.max_entries(os.sysconf("SC_NPROCESSORS_ONLN"))
    assert r.memory_known == (r.summary.memory_mib > 0)
