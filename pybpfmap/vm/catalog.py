"""The test-VM kernels: the one place that names them.

Each :class:`CatalogKernel` is a Debian kernel package on a Debian userspace.
Its ``name`` is what every ``--kernel`` option takes (``all`` means every
entry).  The exact package is resolved when the image is built, because
Debian's ABI numbers move (``linux-image-5.10.0-46-amd64`` today): the
newest package matching ``image_pattern`` that also has a matching
``linux-headers`` package (BCC compiles against the headers) wins.

Why these five: they span the eras that change the answer (``pybpfmap.era``).
5.10 still allocates with kmalloc/alloc_percpu under the bucket lock and has
no ``map_locked`` (the seed's deadlock can happen); 6.1 and 6.12 use
bpf_mem_alloc and refuse re-entry with -EBUSY; 7.x has resilient spinlocks
(-EDEADLK/-ETIMEDOUT).  The PREEMPT_RT 5.10 flavour refuses what the others
merely warn about.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pybpfmap.errors import UsageError

ALL = "all"


class Form(enum.StrEnum):
    """How a kernel the user brings is given (:mod:`pybpfmap.vm.own`)."""

    DEBS = "debs"   # a directory of .deb files: image, headers and what they need
    TREE = "tree"   # a kernel build tree (bzImage, modules, the tree as the headers)


@dataclass(frozen=True)
class CatalogKernel:
    """One test-VM kernel: which Debian packages, on which Debian userspace."""

    name: str
    userspace: str              # the Debian suite debootstrapped for the image
    series: str                 # "5.10": the guest's ``uname -r`` must start with it
    summary: str
    # Extra apt sources (``{mirror}`` and ``{security}`` are filled in at build
    # time from the host's configured mirror) and the kernel to install from
    # them; empty: the userspace suite's own ``linux-image-amd64``.
    sources: tuple[str, ...] = ()
    image_pattern: str = ""     # regex over package names, e.g. linux-image-5.10.0-N-amd64
    target_release: str = ""    # apt -t (backports are not installed by default)
    preempt_rt: bool = False
    # A kernel the user brings (:mod:`pybpfmap.vm.own`): where it came from, in
    # which form, and the digest of its files' content (the image key's input).
    origin: str = ""
    form: Form | None = None
    digest: str = ""

    @property
    def own_kernel(self) -> bool:
        """True when the image installs a kernel other than its suite's default."""
        return bool(self.image_pattern)

    @property
    def brought(self) -> bool:
        """True for a kernel the user brings (``--kernel PATH``), not a catalog entry."""
        return bool(self.origin)

    def headers_for(self, image_package: str) -> str:
        """linux-image-5.10.0-46-amd64 -> linux-headers-5.10.0-46-amd64."""
        return image_package.replace("linux-image-", "linux-headers-", 1)

    def matches_release(self, release: str) -> bool:
        """Whether ``uname -r`` ``release`` is this entry's kernel series and flavour
        (a kernel the user brings: exactly its release)."""
        if self.brought:
            return release == self.series
        if not re.match(rf"{re.escape(self.series)}\.", release):
            return False
        return ("-rt-" in release) == self.preempt_rt


_BULLSEYE_SOURCES = ("deb {mirror} bullseye main",
                     "deb {security} bullseye-security main")

KERNELS: tuple[CatalogKernel, ...] = (
    CatalogKernel(
        "bullseye", "bookworm", "5.10",
        "Debian bullseye's Linux 5.10 (bullseye-security) on bookworm userspace: "
        "NO_PREALLOC allocates under the bucket lock, no map_locked",
        _BULLSEYE_SOURCES, r"linux-image-5\.10\.0-\d+-amd64"),
    CatalogKernel(
        "bullseye-rt", "bookworm", "5.10",
        "the PREEMPT_RT flavour of Debian's Linux 5.10 on bookworm userspace: "
        "the verifier refuses NO_PREALLOC hash maps in tracing programs",
        _BULLSEYE_SOURCES, r"linux-image-5\.10\.0-\d+-rt-amd64", preempt_rt=True),
    CatalogKernel(
        "bookworm", "bookworm", "6.1",
        "Debian bookworm's Linux 6.1: bpf_mem_alloc, map_locked (-EBUSY)"),
    CatalogKernel(
        "trixie", "trixie", "6.12",
        "Debian trixie's Linux 6.12: bpf_mem_alloc, map_locked (-EBUSY)"),
    CatalogKernel(
        "trixie-backports", "trixie", "7.3",
        "the newest trixie-backports kernel that has headers (7.3) on trixie userspace: "
        "rqspinlock bucket locks (-EDEADLK/-ETIMEDOUT)",
        ("deb {mirror} trixie-backports main",),
        r"linux-image-7\.3\.\d+\+deb13-amd64", target_release="trixie-backports"),
)

BY_NAME = {k.name: k for k in KERNELS}
BROUGHT_FIELDS = ("origin", "form", "digest")
NAMES = tuple(BY_NAME)
CHOICES = (*NAMES, ALL)
DEFAULT = "bookworm"


def get(name: str, param: str = "--kernel") -> CatalogKernel:
    """The catalog entry ``name``; a UsageError naming the choices otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise UsageError(param, f"unknown test-VM kernel {name!r}; choose from "
                         f"{', '.join(CHOICES)}") from None


def resolve(names: Iterable[str], param: str = "--kernel") -> list[CatalogKernel]:
    """Entries for ``names`` in catalog order of first mention; ``all`` is every entry."""
    out: dict[str, CatalogKernel] = {}
    for name in names:
        for k in (KERNELS if name == ALL else (get(name, param),)):
            out.setdefault(k.name, k)
    return list(out.values())
