"""The kernel's own samples/bpf/map_perf_test, as a peer of the syscall mode.

``vagrant/map-perf-test.sh`` builds it for a guest's kernel from Debian's
``linux-source-X.Y`` into :data:`PEER_DIR`: the binary, its BPF object and
the BPF source that was built (``map_perf_test_kern.c`` up to 6.1,
``map_perf_test.bpf.c`` in 6.12 and later), ``VERSION`` (the source package
version) and ``BUILD_INFO`` (``key=value``).  This module knows the four
hash-map tests, parses what the binary prints and runs it.

One *event* is one syscall, i.e. one run of the kprobe program.  Linux kernel
commit 89dc8d0c38e0 ("samples/bpf: Reduce syscall overhead in map_perf_test.")
(in v6.1) made a run do 10 update -> lookup -> delete triples instead of one:
:func:`triples_per_event` reads that from the source that was built, not from
a version number.  Its "kmalloc" tests are the ``BPF_F_NO_PREALLOC`` maps;
since Linux kernel commit fba1a1c6c912 ("bpf: Convert hash map to
bpf_mem_alloc.") (in v6.1) their elements come from bpf_mem_alloc, which
``BUILD_INFO``'s ``no_prealloc_allocator`` records (read from the kernel's
hashtab.c at build time).

Quirks of the sample, the same in Debian's 5.10, 6.1, 6.12 and 7.3 sources:

- it attaches all eight of its kprobe programs whatever the test bits say;
- ``fill_lpm_trie()`` writes its 33 prefix-length keys into ``hash_map_alloc``
  (``map_fd[hash_map_alloc_idx]``), not into the LPM trie, so the hash
  NO_PREALLOC test runs with 33 extra elements in its map, and aborts on an
  assert when that map is smaller (:func:`run` refuses such sizes);
- after a load or attach failure it prints ``ERROR: ...`` and exits 0;
- it pins child *i* to CPU *i*; where that fails the child runs unpinned.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pybpfmap import procs
from pybpfmap.errors import EnvironmentProblem, UsageError

PEER_DIR = Path("/usr/local/lib/pybpfmap/map_perf_test")
BINARY = "map_perf_test"
KILL_WAIT = 10.0  # s for a killed run's processes to be gone
LPM_FILL_KEYS = 33  # prefix lengths 0..32 that fill_lpm_trie() puts into hash_map_alloc


@dataclass(frozen=True)
class PeerTest:
    """One map_perf_test test: its bit in test_flags and what it measures."""

    bit: int
    name: str          # test name as printed: "hash_map_perf"
    alloc: str         # allocation word as printed: "pre-alloc" or "kmalloc"
    map_type: str      # pybpfmap's map type name (pybpfmap.maps.MapSpec.type)
    prealloc: bool     # False: BPF_F_NO_PREALLOC
    syscall: str       # the syscall whose kprobe (__x64_sys_<syscall>) runs the program
    program: str       # the program's function in the BPF source

    @property
    def label(self) -> str:
        """pybpfmap's label for the same map: ``hash/prealloc``."""
        return f"{self.map_type}/{'prealloc' if self.prealloc else 'no_prealloc'}"


PEER_TESTS: tuple[PeerTest, ...] = (
    PeerTest(1, "hash_map_perf", "pre-alloc", "hash", True, "getuid", "stress_hmap"),
    PeerTest(2, "percpu_hash_map_perf", "pre-alloc", "percpu_hash", True, "geteuid",
             "stress_percpu_hmap"),
    PeerTest(4, "hash_map_perf", "kmalloc", "hash", False, "getgid", "stress_hmap_alloc"),
    PeerTest(8, "percpu_hash_map_perf", "kmalloc", "percpu_hash", False, "getegid",
             "stress_percpu_hmap_alloc"),
)
ALL_BITS = sum(t.bit for t in PEER_TESTS)


@dataclass(frozen=True)
class PeerResult:
    """One line map_perf_test printed: one CPU's rate for one test."""

    cpu: int
    name: str      # "hash_map_perf", "lru_hash_map_perf", "hash_lookup"...
    alloc: str     # "pre-alloc", "kmalloc", or "" (the lookup tests print none)
    rate: int      # per second, as printed (integer division in the sample)
    unit: str      # "events" (syscalls), or "lookups" for the *_lookup tests

    @property
    def test(self) -> PeerTest | None:
        """The :data:`PEER_TESTS` entry this line belongs to (None for the others)."""
        return next((t for t in PEER_TESTS if (t.name, t.alloc) == (self.name, self.alloc)),
                    None)

    def triples_per_sec(self, triples_per_event: int) -> int:
        """update -> lookup -> delete triples per second on this CPU."""
        return self.rate * triples_per_event


# "%d:%s pre-alloc %lld events per sec" and friends (map_perf_test_user.c).
_LINE = re.compile(r"^(?P<cpu>\d+):(?P<name>\w+) (?:(?P<alloc>pre-alloc|kmalloc) )?"
                   r"(?P<rate>\d+) (?P<unit>events|lookups) per sec$")


def parse(output: str) -> list[PeerResult]:
    """Every result line of map_perf_test's stdout, in the order printed
    (children print when they finish, so CPUs come in any order); other lines
    are not results and are skipped."""
    out = []
    for line in output.splitlines():
        m = _LINE.match(line.strip())
        if m:
            out.append(PeerResult(int(m["cpu"]), m["name"], m["alloc"] or "",
                                  int(m["rate"]), m["unit"]))
    return out


def _function_body(source: str, name: str) -> str:
    """The brace-balanced body of C function ``name`` in ``source``, defined
    as ``int name(struct pt_regs *ctx)`` (up to 6.1) or ``int
    BPF_KSYSCALL(name)`` (6.12 and later)."""
    m = re.search(rf"\bint\s+(?:\w+\(\s*)?{re.escape(name)}\b[^{{;]*\{{", source)
    if not m:
        raise EnvironmentProblem("map_perf_test BPF source", f"no function {name}() in it")
    depth, start = 1, m.end()
    for i in range(start, len(source)):
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        if depth == 0:
            return source[start:i]
    raise EnvironmentProblem("map_perf_test BPF source", f"{name}() has no closing brace")


def triples_per_event(bpf_source: str, program: str = "stress_hmap") -> int:
    """Triples one run of ``program`` does, read from the BPF source's text:
    the bound of its ``for (i = 0; i < N; i++)`` loop (10 since 89dc8d0c38e0,
    v6.1), or 1 when the single triple is not in a loop (before)."""
    body = _function_body(bpf_source, program)
    if body.count("bpf_map_update_elem") != 1:
        raise EnvironmentProblem(program, "does not do one update per "
                                 "iteration; cannot tell how many triples an event is")
    loops = re.findall(r"for\s*\(\s*\w+\s*=\s*0\s*;\s*\w+\s*<\s*(\d+)\s*;", body)
    if len(loops) > 1:
        raise EnvironmentProblem(program, f"has {len(loops)} loops; cannot tell "
                                 "how many triples an event is")
    return int(loops[0]) if loops else 1


@dataclass(frozen=True)
class PeerBuild:
    """What vagrant/map-perf-test.sh installed in a directory."""

    path: Path
    release: str              # the kernel it was built for (uname -r)
    source_version: str       # Debian's linux-source-X.Y version
    no_prealloc_allocator: str  # "bpf_mem_alloc" (6.1+) or "kmalloc"
    triples_per_event: dict[int, int]  # test bit -> triples per event

    @classmethod
    def load(cls, path: Path | str = PEER_DIR) -> PeerBuild:
        """Read the build in ``path``; EnvironmentProblem when it is not one."""
        path = Path(path)
        keys = ("release", "source_version", "no_prealloc_allocator", "bpf_source")
        try:
            info = dict(line.split("=", 1) for line in
                        (path / "BUILD_INFO").read_text().splitlines() if "=" in line)
            missing = [k for k in keys if k not in info]
            if missing:
                raise EnvironmentProblem(str(path / "BUILD_INFO"), f"lacks {', '.join(missing)}")
            source = (path / info["bpf_source"]).read_text()
        except OSError as e:
            raise EnvironmentProblem(str(path), f"no map_perf_test build here ({e.strerror}: "
                                     f"{e.filename}); vagrant/map-perf-test.sh makes one") from e
        return cls(path, info["release"], info["source_version"],
                   info["no_prealloc_allocator"],
                   {t.bit: triples_per_event(source, t.program) for t in PEER_TESTS})


def _check_args(test_bits: int, nr_cpus: int, num_map_entries: int, max_cnt: int) -> None:
    if not 0 < test_bits <= ALL_BITS:
        # 0 would mean "every test" to the sample, LRU, LPM and array ones included
        raise UsageError("test_bits", f"{test_bits} is not a non-empty set of "
                         f"{', '.join(str(t.bit) for t in PEER_TESTS)}")
    cpus = os.sched_getaffinity(0)
    if nr_cpus < 1 or not set(range(nr_cpus)) <= cpus:
        raise UsageError("nr_cpus", f"{nr_cpus}: map_perf_test pins child i to CPU i, and "
                         f"CPUs 0..{nr_cpus - 1} are not all usable here ({sorted(cpus)})")
    if max_cnt < 1:
        raise UsageError("max_cnt", f"{max_cnt}: need at least one syscall per CPU")
    # 0 keeps the object's max_entries (1000); else every map must hold one key
    # per CPU, and hash_map_alloc also the keys fill_lpm_trie() puts in it.
    need = nr_cpus + (LPM_FILL_KEYS if test_bits & 4 else 0)
    if num_map_entries and num_map_entries < need:
        extra = (f" plus the {LPM_FILL_KEYS} keys fill_lpm_trie() writes into the "
                 "NO_PREALLOC hash" if test_bits & 4 else "")
        raise UsageError("num_map_entries", f"{num_map_entries} < {need}: every map must "
                         f"hold one key per CPU{extra}")


def run(binary_dir: Path | str, test_bits: int, nr_cpus: int, num_map_entries: int,
        max_cnt: int, timeout: float) -> list[PeerResult]:
    """Run ``map_perf_test test_bits nr_cpus num_map_entries max_cnt`` from
    ``binary_dir`` (needs root, kprobes, and BTF for its CO-RE reads) and return
    its results: ``nr_cpus`` for each test in ``test_bits``.  Any failure is an
    EnvironmentProblem with one line saying what went wrong."""
    _check_args(test_bits, nr_cpus, num_map_entries, max_cnt)
    binary = Path(binary_dir) / BINARY
    if not os.access(binary, os.X_OK):
        raise EnvironmentProblem(str(binary), "missing or not executable; "
                                 "vagrant/map-perf-test.sh builds it")
    # argv[0] must be the path: the binary opens argv[0] + "_kern.o" (or ".bpf.o").
    argv = [str(binary), str(test_bits), str(nr_cpus), str(num_map_entries), str(max_cnt)]
    # Its own process group (procs.capture), so that a timeout kills the forked
    # children too; killed means no process of the group is alive any more
    # (/proc), not EOF on its pipes, which do_exit() gives before that.
    try:
        done = procs.capture(argv, timeout, KILL_WAIT)
    except procs.StuckProcess as e:
        raise EnvironmentProblem(BINARY, str(e)) from None
    if done.timed_out:
        raise EnvironmentProblem(BINARY, f"still running after {timeout:g} s "
                                 f"({' '.join(argv[1:])}); killed")
    stdout, stderr, status = done.stdout, done.stderr, done.returncode
    errors = [line for line in stderr.splitlines() if line.strip()]
    last = errors[-1] if errors else ""
    if status != 0:
        how = (f"killed by signal {-status}" if status < 0 else f"exit status {status}")
        raise EnvironmentProblem(BINARY, f"{how}: {last or 'no message'}")
    failure = next((line for line in errors if line.startswith("ERROR")), None)
    if failure:  # the sample exits 0 after these; libbpf's first line says why
        why = next((line for line in errors if line.startswith("libbpf:")), "")
        raise EnvironmentProblem(BINARY, f"{failure}{f' ({why})' if why else ''}")
    results = [r for r in parse(stdout) if r.test and r.test.bit & test_bits]
    want = nr_cpus * bin(test_bits).count("1")
    if len(results) != want:
        raise EnvironmentProblem(BINARY, f"printed {len(results)} of {want} results "
                                 f"({last or 'no message on stderr'})")
    return results
