"""The test VM's cached images: where they are and which one is current.

One image per catalog kernel (:mod:`pybpfmap.vm.catalog`), built by
:mod:`pybpfmap.vm.build`.  An image is ``<cache>/<name>-<key>/``
(``PYBPFMAP_VM_CACHE`` overrides ``/var/cache/pybpfmap/vm``); ``key`` hashes
everything it is made from (``provision.sh``, the catalog entry, the stub init,
the map_perf_test recipe, the builder's version), so an image is rebuilt only
when one of those changes.  Runs never write to it: the runner boots a qcow2
overlay on top.  Looking an image up never builds one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pybpfmap.errors import EnvironmentProblem
from pybpfmap.kfacts import KernelFacts, stable_version
from pybpfmap.vm.catalog import BROUGHT_FIELDS, CatalogKernel

BUILDER_VERSION = 2
VAGRANT = Path(__file__).resolve().parents[2] / "vagrant"
PROVISION = VAGRANT / "provision.sh"
PEER_RECIPE = VAGRANT / "map-perf-test.sh"
PEER_DIR = "/usr/local/lib/pybpfmap/map_perf_test"

# Installed as /sbin/pybpfmap-init and booted with init=.  It only mounts the
# per-run control share and hands over to the init script the runner put there
# (pybpfmap/guest.py), so changing that script needs no image rebuild.
STUB_INIT = """#!/bin/sh
# pybpfmap test VM: mount the per-run control share, run its init.sh.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
# The initramfs has moved proc, sys and dev here already; mount them if not.
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mkdir -p /run/pybpfmap/ctl
modprobe -q 9pnet_virtio; modprobe -q 9p
if mount -t 9p -o trans=virtio,version=9p2000.L,ro pybpfmap_ctl /run/pybpfmap/ctl; then
    exec /bin/sh /run/pybpfmap/ctl/init.sh
fi
echo "pybpfmap-init: no control share (9p tag pybpfmap_ctl); powering off" >/dev/console
echo o >/proc/sysrq-trigger
while :; do sleep 60; done
"""

@dataclass(frozen=True)
class Image:
    """A built image: where its parts are, which catalog kernel, which release."""

    path: Path
    name: str
    key: str
    release: str

    @property
    def disk(self) -> Path:
        return self.path / "root.qcow2"

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def system_map(self) -> Path:
        return self.path / "System.map"

    @property
    def kallsyms(self) -> Path:
        """The guest's core-kernel /proc/kallsyms, dumped by the first boot."""
        return self.path / "kallsyms"

    def facts(self) -> dict:
        """image.json: packages, sizes, build time."""
        return json.loads((self.path / "image.json").read_text())

    def banner(self) -> str:
        """The kernel's version banner, as /proc/version will say it (read from
        the bzImage's setup header: ``kernel_version`` at 0x20e points into
        the setup code, past its first 0x200 bytes); "" when it cannot be read."""
        try:
            with open(self.kernel, "rb") as f:
                head = f.read(0x8000)
            start = struct.unpack_from("<H", head, 0x20E)[0] + 0x200
            return head[start:start + 256].split(b"\0")[0].decode(errors="replace")
        except (OSError, struct.error):
            return ""

    def assumed_facts(self, preempt_rt: bool) -> KernelFacts:
        """The era facts of a kernel not booted yet: from its release and, where
        its banner names it, its stable release (so that backports count)."""
        return KernelFacts.assumed_from(self.release, preempt_rt,
                                        stable_version(self.banner(), self.release))


def cache_root() -> Path:
    """Where images live: ``$PYBPFMAP_VM_CACHE`` or ``/var/cache/pybpfmap/vm``."""
    return Path(os.environ.get("PYBPFMAP_VM_CACHE", "/var/cache/pybpfmap/vm"))


def digest(*parts: bytes) -> str:
    """The cache's key of what something is made from: 16 hex digits of a
    SHA-256 over each part's own SHA-256 (images, bases, peer builds)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def locked(root: Path, name: str = ".lock") -> Iterator[None]:
    """An exclusive flock on ``root/name`` (``root`` created): one builder at a
    time in a cache directory."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / name, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _provision_bytes() -> bytes:
    if not PROVISION.is_file():
        raise EnvironmentProblem(str(PROVISION), "provisioning script not found; "
                                 "run pybpfmap from its source tree")
    return PROVISION.read_bytes()


def base_key(suite: str) -> str:
    """Hash of the base stage's inputs."""
    return digest(_provision_bytes(), suite.encode(), str(BUILDER_VERSION).encode())


def image_key(entry: CatalogKernel) -> str:
    """Hash of the image's inputs; a new key means a new build.  A kernel the
    user brings is keyed by its files' content (``entry.digest``), not by its
    path: the same .debs anywhere share one image."""
    if entry.brought:
        return digest(base_key(entry.userspace).encode(), entry.form.value.encode(),
                       entry.digest.encode(), STUB_INIT.encode())
    peer = PEER_RECIPE.read_bytes() if PEER_RECIPE.is_file() else b""
    return digest(base_key(entry.userspace).encode(), _catalog_repr(entry).encode(),
                   STUB_INIT.encode(), peer)


def _catalog_repr(entry: CatalogKernel) -> str:
    """The entry's repr without the fields of a kernel the user brings (empty
    for catalog entries): adding those did not change what a catalog image is."""
    shown = [f.name for f in dataclasses.fields(entry) if f.name not in BROUGHT_FIELDS]
    return f"CatalogKernel({', '.join(f'{n}={getattr(entry, n)!r}' for n in shown)})"


def image_dir(name: str, key: str) -> Path:
    return cache_root() / f"{name}-{key}"


def is_image_of(path: Path, name: str) -> bool:
    """``trixie-<key>`` is trixie's, ``trixie-backports-<key>`` is not."""
    return re.fullmatch(re.escape(name) + r"-[0-9a-f]{16}", path.name) is not None


def find_image(entry: CatalogKernel) -> Image | None:
    """The cached image of ``entry`` built from the current inputs, if any."""
    d = image_dir(entry.name, image_key(entry))
    meta = d / "image.json"
    if not meta.is_file():
        return None
    info = json.loads(meta.read_text())
    return Image(d, entry.name, info["key"], info["release"])



def brought_images() -> list[tuple[Image, dict]]:
    """Cached images of kernels users brought (``--kernel PATH``), with their
    image.json, newest first."""
    out = []
    for meta in cache_root().glob("*/image.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            info = json.loads(meta.read_text())
            if info.get("catalog", {}).get("origin"):
                out.append((Image(meta.parent, info["name"], info["key"], info["release"]),
                            info))
    return sorted(out, key=lambda x: x[1].get("built", ""), reverse=True)


def image_size(image: Image) -> int:
    """Bytes the image occupies on the host (disk, kernel, initrd...)."""
    return sum(f.stat().st_size for f in image.path.iterdir() if f.is_file())




def release_of(entry: CatalogKernel) -> str:
    """The kernel release ``entry`` boots: its built image's, else (not built
    yet) the first release of its catalog series, which is what the era
    predictions need."""
    image = find_image(entry)
    return image.release if image else f"{entry.series}.0"
