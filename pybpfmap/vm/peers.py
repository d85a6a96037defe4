"""Peer tools built on the host for the test VMs: the kernel selftests' ``bench htab-mem``.

Linux kernel commit fd283ab196a8 ("selftests/bpf: Add benchmark for bpf
memory allocator") (in v6.6) added it.  It is in no Debian package and 6.1's
source has no such bench, so it is built here, on the host, by
``vagrant/htab-mem-bench.sh`` from a ``linux-source-X.Y`` tarball >= 6.6,
for one guest kernel (whose BTF says whether it has the helpers the BPF
object calls), into ``<vm cache>/peers/htab-mem-<release>-<key>/``: the key
hashes the recipe, the source package's version and the kernel release, so
the VM images (and their keys) stay as they are.  Every test-VM run shares
``<vm cache>/peers`` read-only at :data:`pybpfmap.guest.GUEST_PEERS`, where
:func:`locate` finds the build for the running kernel.

The source: a linux-source package already unpacked under
``<vm cache>/sources`` (or installed, or under ``$PYBPFMAP_KERNEL_SOURCES``),
else the newest one Debian's ``trixie`` suite has (:func:`fetch_source`:
``apt-get download`` with a private apt state, so that the host's apt
configuration is not touched; apt checks the archive's signature).  The
build tools it lacks (clang, libelf-dev, libc6-dev-i386 ...) the recipe
installs with apt-get, as the image builds do in their chroot.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path

from pybpfmap import procs
from pybpfmap.errors import EnvironmentProblem
from pybpfmap.guest import ENV_PEERS
from pybpfmap.vm.build import debian_mirror
from pybpfmap.vm.image import VAGRANT, cache_root, digest, locked

HTAB_MEM = "htab-mem"
RECIPE = VAGRANT / "htab-mem-bench.sh"
BINARY = "bench"
FIRST_SERIES = (6, 6)          # bench_htab_mem.c's first release
FETCH_SUITE = "trixie"         # whose linux-source (6.12) has it; on every Debian mirror
ENV_SOURCES = "PYBPFMAP_KERNEL_SOURCES"
HOST_BTF = Path("/sys/kernel/btf/vmlinux")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_TIMEOUT = 900.0            # s: apt-get update or a 150 MB download

Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"pybpfmap peer {HTAB_MEM}: {msg}", file=sys.stderr, flush=True)


def peers_dir() -> Path:
    """``<vm cache>/peers``: what every test-VM run shares read-only."""
    return cache_root() / "peers"


def sources_dir() -> Path:
    """``<vm cache>/sources``: linux-source packages unpacked (``dpkg-deb -x``)."""
    return cache_root() / "sources"


# -- Debian versions ---------------------------------------------------------

_NON_DIGITS, _DIGITS = re.compile(r"\D*"), re.compile(r"\d*")


def _char_order(c: str) -> int:
    if c == "~":
        return -1
    return ord(c) if c.isalpha() else ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's comparison of an upstream version or a revision: alternately a
    run of non-digits (character by character, ``~`` first, letters before
    the rest) and a number."""
    while a or b:
        pa, pb = _NON_DIGITS.match(a)[0], _NON_DIGITS.match(b)[0]
        a, b = a[len(pa):], b[len(pb):]
        for i in range(max(len(pa), len(pb))):
            ca = _char_order(pa[i]) if i < len(pa) else 0
            cb = _char_order(pb[i]) if i < len(pb) else 0
            if ca != cb:
                return -1 if ca < cb else 1
        da, db = _DIGITS.match(a)[0], _DIGITS.match(b)[0]
        a, b = a[len(da):], b[len(db):]
        if int(da or 0) != int(db or 0):
            return -1 if int(da or 0) < int(db or 0) else 1
    return 0


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian version ``a`` sorts before, with or after ``b``
    (epoch, upstream, revision; ``~`` sorts before everything)."""
    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.partition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch or 0), upstream, revision

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


# -- kernel sources ----------------------------------------------------------

@dataclass(frozen=True)
class KernelSource:
    """One ``linux-source-X.Y.tar.xz`` and its Debian package version."""

    tarball: Path
    version: str              # "6.12.57-1"

    @property
    def package(self) -> str:
        """``linux-source-6.12``."""
        return self.tarball.name.removesuffix(".tar.xz")

    @property
    def series(self) -> tuple[int, int]:
        return _series(self.package.removeprefix("linux-source-"))

    @property
    def prerelease(self) -> bool:
        """An -rc snapshot (``7.3~rc7-1~exp1``), not a release."""
        return "~rc" in self.version


def _series(text: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2])) if m else (0, 0)


def _package_version(root: Path, package: str) -> str | None:
    """The version in the package's changelog.Debian.gz under ``root``, else
    dpkg's for an installed one (root ``/``)."""
    changelog = root / "usr/share/doc" / package / "changelog.Debian.gz"
    with contextlib.suppress(OSError, EOFError):
        with gzip.open(changelog, "rt", errors="replace") as f:
            m = re.match(r"\S+ \(([^)]+)\)", f.readline())
        if m:
            return m[1]
    if root == Path("/") and shutil.which("dpkg-query"):
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip()
    return None


def source_roots() -> list[str]:
    """Where linux-source packages are looked for (glob patterns): each root
    holds ``usr/src/linux-source-X.Y.tar.xz``.  ``$PYBPFMAP_KERNEL_SOURCES``
    (colon-separated) when set, else :func:`sources_dir`'s and the system's."""
    env = os.environ.get(ENV_SOURCES)
    return env.split(os.pathsep) if env else [str(sources_dir() / "*"), "/"]


def find_sources(roots: Iterable[str] | None = None) -> list[KernelSource]:
    """Every linux-source tarball under ``roots`` (default :func:`source_roots`)
    whose version can be read."""
    found: dict[Path, KernelSource] = {}
    for pattern in roots if roots is not None else source_roots():
        for root in map(Path, sorted(glob(pattern))):
            for tarball in sorted(root.glob("usr/src/linux-source-*.tar.xz")):
                version = _package_version(root, tarball.name.removesuffix(".tar.xz"))
                if version and tarball.resolve() not in found:
                    found[tarball.resolve()] = KernelSource(tarball, version)
    return list(found.values())


def choose_source(sources: Iterable[KernelSource], release: str) -> KernelSource | None:
    """The source to build kernel ``release``'s bench from: one of its own
    series if that has the bench (>= 6.6), else the newest; releases before
    -rc snapshots, then the highest Debian version.  None: none has it."""
    usable = [s for s in sources if s.series >= FIRST_SERIES]
    if not usable:
        return None
    series = _series(release)

    def rank(a: KernelSource, b: KernelSource) -> int:
        for x, y in ((a.series == series, b.series == series),
                     (not a.prerelease, not b.prerelease), (a.series, b.series)):
            if x != y:
                return 1 if x > y else -1
        return compare_versions(a.version, b.version)

    return max(usable, key=functools.cmp_to_key(rank))


def _apt(state: Path, *argv: str, cwd: Path | None = None) -> str:
    """apt-get/apt-cache with a private state in ``state`` (its own
    sources.list, lists and caches): the host's configuration is untouched."""
    tool = "apt-cache" if argv[0] in ("pkgnames", "madison", "policy", "show") else "apt-get"
    opts = [f"Dir::Etc::SourceList={state / 'sources.list'}", "Dir::Etc::SourceParts=-",
            f"Dir::State::Lists={state / 'lists'}", f"Dir::Cache={state / 'cache'}",
            "APT::Sandbox::User=root", "Debug::NoLocking=1"]
    cmd = [tool, "-q", *(x for o in opts for x in ("-o", o)), *argv]
    try:
        r = procs.capture(cmd, APT_TIMEOUT, cwd=cwd, stdin=subprocess.DEVNULL)
    except procs.StuckProcess as e:
        raise EnvironmentProblem(f"{tool} {argv[0]}", str(e)) from None
    if r.timed_out:
        raise EnvironmentProblem(f"{tool} {argv[0]}", f"still running after {APT_TIMEOUT:g} s; "
                                 "killed")
    if r.returncode != 0:
        said = [x for x in (r.stderr or r.stdout).splitlines() if x.strip()]
        raise EnvironmentProblem(f"{tool} {argv[0]}", f"exit status {r.returncode}"
                                 + (f": {said[-1].strip()}" if said else ""))
    return r.stdout


def fetch_source(progress: Progress = _stderr) -> KernelSource:
    """The newest linux-source >= 6.6 of Debian's :data:`FETCH_SUITE`,
    downloaded from the host's Debian mirror and unpacked under
    :func:`sources_dir` (once: found there afterwards)."""
    for tool in ("apt-get", "dpkg-deb"):
        if not shutil.which(tool):
            raise EnvironmentProblem(tool, "not found: a kernel source is fetched with apt")
    root = sources_dir()
    state = root / ".apt"
    for d in (state / "lists" / "partial", state / "cache" / "archives" / "partial"):
        d.mkdir(parents=True, exist_ok=True)
    signed = f"[signed-by={KEYRING}] " if KEYRING.is_file() else ""
    mirror = debian_mirror()
    (state / "sources.list").write_text(f"deb {signed}{mirror} {FETCH_SUITE} main\n")
    progress(f"fetching the package lists of {FETCH_SUITE} from {mirror}")
    _apt(state, "update")
    names = [n for n in _apt(state, "pkgnames", "linux-source-").split()
             if re.fullmatch(r"linux-source-\d+\.\d+", n)
             and _series(n.removeprefix("linux-source-")) >= FIRST_SERIES]
    if not names:
        raise EnvironmentProblem("linux-source", f"Debian {FETCH_SUITE} offers no "
                                 f"linux-source >= {FIRST_SERIES[0]}.{FIRST_SERIES[1]}")
    package = max(names, key=lambda n: _series(n.removeprefix("linux-source-")))
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        progress(f"downloading {package} (about 150 MB)")
        _apt(state, "download", package, cwd=Path(tmp))
        deb = next(Path(tmp).glob(f"{package}_*.deb"))
        version = deb.name.split("_")[1].replace("%3a", ":")
        dest = root / f"{package}_{version}"
        if not dest.is_dir():
            unpacked = Path(tmp) / "unpacked"
            r = subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                raise EnvironmentProblem("dpkg-deb", f"cannot unpack {deb.name}: "
                                         f"{r.stderr.strip()}")
            unpacked.rename(dest)
    return KernelSource(dest / "usr/src" / f"{package}.tar.xz", version)


# -- builds ------------------------------------------------------------------

def build_key(source_version: str, release: str, recipe: Path = RECIPE) -> str:
    """Hash of what a build is made from: the recipe, the source package
    version and the guest kernel release."""
    return digest(recipe.read_bytes(), source_version.encode(), release.encode())


_MAX_ENTRIES = re.compile(r"MAX\(\s*(\d+)\s*,\s*(\d+)\s*\*\s*env\.nr_cpus\s*\)")


@dataclass(frozen=True)
class HtabMemBuild:
    """What vagrant/htab-mem-bench.sh installed in a directory (its BUILD_INFO)."""

    path: Path
    release: str               # the guest kernel it was built for
    source_package: str        # linux-source-6.12
    source_version: str        # Debian's version of it
    use_cases: tuple[str, ...]  # as bench_htab_mem.c names them
    options: tuple[str, ...]   # its own long options: value-size use-case preallocated
    op_batch: int | None       # map operations per op (OP_BATCH in htab_mem_bench.c)
    max_entries_expr: str      # how the bench sizes the map, as its source says it
    info: dict[str, str] = field(repr=False)

    @property
    def binary(self) -> Path:
        return self.path / BINARY

    def max_entries(self, nr_cpus: int) -> int | None:
        """The map's max_entries on a machine with ``nr_cpus`` online CPUs."""
        m = _MAX_ENTRIES.fullmatch(self.max_entries_expr.strip())
        return max(int(m[1]), int(m[2]) * nr_cpus) if m else None

    def describe(self) -> str:
        """One line for a record: which source built it, for which kernel."""
        return (f"selftests bench {HTAB_MEM} from {self.source_package} {self.source_version}, "
                f"built for {self.release} (libbpf {self.info.get('libbpf', '?')})")

    @classmethod
    def load(cls, path: Path | str) -> HtabMemBuild:
        """Read the build in ``path``; EnvironmentProblem when it is not one."""
        path = Path(path)
        try:
            info = dict(line.split("=", 1) for line in
                        (path / "BUILD_INFO").read_text().splitlines() if "=" in line)
        except OSError as e:
            raise EnvironmentProblem(str(path), f"no {HTAB_MEM} build here ({e.strerror})"
                                     ) from e
        missing = [k for k in ("release", "source_package", "source_version", "use_cases",
                               "options") if k not in info]
        if missing:
            raise EnvironmentProblem(str(path / "BUILD_INFO"), f"lacks {', '.join(missing)}")
        op_batch = None
        with contextlib.suppress(OSError):
            m = re.search(r"^#define OP_BATCH (\d+)$",
                          (path / "htab_mem_bench.c").read_text(), re.M)
            op_batch = int(m[1]) if m else None
        return cls(path, info["release"], info["source_package"], info["source_version"],
                   tuple(info["use_cases"].split()), tuple(info["options"].split()),
                   op_batch, info.get("max_entries", ""), info)


def _complete(path: Path) -> bool:
    return (path / "BUILD_INFO").is_file() and os.access(path / BINARY, os.X_OK)


def ensure_htab_mem(release: str, btf: Path, source: KernelSource | None = None, *,
                    root: Path | None = None, progress: Progress = _stderr) -> HtabMemBuild:
    """The build of ``bench htab-mem`` for kernel ``release`` (``btf``: its
    image, or a raw BTF file such as :data:`HOST_BTF`), built first if it is
    not in ``root`` (default :func:`peers_dir`).  ``source`` None: the one
    :func:`choose_source` picks, fetched when there is none."""
    if not RECIPE.is_file():
        raise EnvironmentProblem(str(RECIPE), "recipe not found; run from the source tree")
    root = root or peers_dir()
    with locked(root, f".lock-{HTAB_MEM}"):
        source = source or choose_source(find_sources(), release) or fetch_source(progress)
        final = root / f"{HTAB_MEM}-{release}-{build_key(source.version, release)}"
        if _complete(final):
            return HtabMemBuild.load(final)
        work = root / f".build-{final.name}"
        shutil.rmtree(work, ignore_errors=True)
        log = root / f"build-{HTAB_MEM}-{release}.log"
        progress(f"building for {release} from {source.package} {source.version} (log: {log})")
        t0 = time.monotonic()
        # Its own process group: Ctrl-C or an error here stops make and the compilers too.
        with open(log, "w") as out, procs.Child(
                ["sh", str(RECIPE), str(source.tarball), source.version, str(btf), release,
                 str(work)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "HMB_INSTALL": "1"}) as child:
            status = child.wait()
        if status != 0:
            shutil.rmtree(work, ignore_errors=True)
            said = [x for x in log.read_text(errors="replace").splitlines()
                    if x.startswith("htab-mem-bench: ") and "logs in" not in x]
            why = said[-1].removeprefix("htab-mem-bench: ") if said else \
                f"exit status {status}"
            raise EnvironmentProblem(f"{HTAB_MEM} build", f"{why} (log: {log})")
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
        progress(f"built in {time.monotonic() - t0:.0f} s: {final}")
    return HtabMemBuild.load(final)


def default_root() -> Path:
    """Where builds are: the peers share in the test VM, the VM cache outside."""
    shared = os.environ.get(ENV_PEERS)
    return Path(shared) if shared else peers_dir()


def locate(release: str | None = None, root: Path | None = None) -> HtabMemBuild:
    """The build for kernel ``release`` (default: the running one) in ``root``
    (default: :func:`default_root`) made by the current recipe; of several
    (other sources), the newest source version."""
    release = release or os.uname().release
    root = root or default_root()
    name = re.compile(rf"{re.escape(HTAB_MEM)}-{re.escape(release)}-([0-9a-f]{{16}})")
    builds = []
    with contextlib.suppress(OSError):
        for d in root.iterdir():
            m = name.fullmatch(d.name)
            if not m or not _complete(d):
                continue
            with contextlib.suppress(EnvironmentProblem):
                b = HtabMemBuild.load(d)
                if m[1] == build_key(b.source_version, release):
                    builds.append(b)
    if not builds:
        raise EnvironmentProblem(str(root), f"no {HTAB_MEM} build for kernel {release} made "
                                 "by the current recipe (pybpfmap bench --peer htab-mem "
                                 "builds it on the host before it boots the test VM)")
    return max(builds, key=functools.cmp_to_key(
        lambda a, b: compare_versions(a.source_version, b.source_version)))
