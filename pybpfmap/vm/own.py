"""A kernel the user brings: ``--kernel PATH`` beside the catalog's names.

PATH is one of
- a directory of ``.deb`` files: the kernel image and its headers with what
  the headers need, as a distribution ships them (Debian: ``linux-image-R``,
  ``linux-headers-R``, ``linux-headers-R-common``, ``linux-kbuild-X``) or as
  ``make bindeb-pkg`` makes them;
- a kernel build tree: its ``arch/x86/boot/bzImage``, its modules (installed
  with ``make modules_install``) and its headers as BCC's
  ``/lib/modules/R/build``, the way the kernel's ``vmtest.sh`` boots the tree
  it sits in.

The entry is a :class:`~pybpfmap.vm.catalog.CatalogKernel` named by its
release, on the Debian userspace of its time (bookworm; trixie from 6.12,
whose BCC and clang know the newer headers), so every command that takes a
catalog kernel takes it.  Its image is keyed by the digest of the files'
content, not by their names or where they are (:func:`pybpfmap.vm.image.image_key`).
Before any build or boot, the kernel's configuration is checked
(:mod:`pybpfmap.vm.kconfig`): one that cannot boot the relay is one error.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from pybpfmap.errors import UsageError
from pybpfmap.vm import kconfig
from pybpfmap.vm.catalog import CatalogKernel, Form

PARAM = "--kernel"
TREE_IMAGE = "arch/x86/boot/bzImage"
# What BCC reads from /lib/modules/R/build: the include paths it adds, the
# configuration and the Makefile it takes the version from.
TREE_HEADERS = ("include", "arch/x86/include", ".config", "Makefile", "Module.symvers")


def looks_like_path(text: str) -> bool:
    """A ``--kernel`` value that names a path rather than a catalog entry."""
    return "/" in text or text.startswith(".") or Path(text).exists()


def _hash_files(files: list[Path]) -> str:
    """Digest of the files' content, independent of their names and order."""
    digests = []
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        digests.append(h.hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]


def _userspace(release: str) -> str:
    """The Debian suite whose tools (BCC, clang, bpftool) match the kernel's headers."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        raise UsageError(PARAM, f"cannot read a kernel version from release {release!r}")
    return "trixie" if (int(m.group(1)), int(m.group(2))) >= (6, 12) else "bookworm"


def _deb_field(deb: Path, field: str) -> str:
    r = subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise UsageError(PARAM, f"{deb}: not a Debian package ({r.stderr.strip()})")
    return r.stdout.strip()


def _deb_member(deb: Path, member: str) -> bytes | None:
    """One file's content from a .deb's data archive (dpkg-deb --fsys-tarfile | tar)."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                          stdin=subprocess.DEVNULL) as data:
        r = subprocess.run(["tar", "-xOf", "-", f"./{member}"], stdin=data.stdout,
                           capture_output=True)
        data.stdout.close()
    return r.stdout if r.returncode == 0 else None


def _from_debs(path: Path) -> CatalogKernel:
    debs = sorted(path.glob("*.deb"))
    packages = {_deb_field(d, "Package"): d for d in debs}
    images = [p for p in packages if re.fullmatch(r"linux-image-\d\S*", p)
              and not p.endswith("-dbg") and not p.endswith("-unsigned")]
    if len(images) != 1:
        raise UsageError(PARAM, f"{path}: expected one linux-image-<release> .deb, found "
                         f"{', '.join(images) or 'none'}")
    release = images[0].removeprefix("linux-image-")
    headers = f"linux-headers-{release}"
    if headers not in packages:
        raise UsageError(PARAM, f"{path}: no {headers} .deb (BCC compiles against the "
                         "kernel's headers; add it and what it depends on, e.g. "
                         f"{headers.removesuffix('-amd64')}-common and linux-kbuild-X)")
    raw = _deb_member(packages[images[0]], f"boot/config-{release}")
    if raw is None:
        raise UsageError(PARAM, f"{packages[images[0]]}: no boot/config-{release} in the "
                         "package, so the kernel's configuration cannot be checked")
    config = kconfig.parse(raw.decode(errors="replace"))
    return _entry(path, Form.DEBS, release, config, _hash_files(debs))


def _from_tree(path: Path) -> CatalogKernel:
    release_file = path / "include/config/kernel.release"
    if not release_file.is_file():
        raise UsageError(PARAM, f"{path}: has {TREE_IMAGE} but no "
                         "include/config/kernel.release: build the tree first (make)")
    release = release_file.read_text().strip()
    config = kconfig.read(path / ".config")
    files = [path / TREE_IMAGE, path / ".config"]
    order = path / "modules.order"
    if order.is_file():
        # the .ko of each built module (modules.order lists the .o or .ko)
        files += [k for line in order.read_text().split()
                  if (k := path / re.sub(r"\.o$", ".ko", line)).is_file()]
    return _entry(path, Form.TREE, release, config, _hash_files(files))


def _entry(path: Path, form: Form, release: str, config: dict[str, str],
           digest: str) -> CatalogKernel:
    kconfig.require_boot(config, f"{PARAM} {path}")
    rt = config.get("PREEMPT_RT") == "y"
    return CatalogKernel(
        name=release, userspace=_userspace(release), series=release,
        summary=f"your kernel {release} ({form.value}: {path})",
        preempt_rt=rt, origin=str(path), form=form, digest=digest)


def resolve(text: str) -> CatalogKernel:
    """The entry for the kernel at ``text`` (a directory of .debs or a build tree)."""
    path = Path(text).expanduser().resolve()
    if not path.exists():
        raise UsageError(PARAM, f"{text}: no such file or directory, and not a "
                         "test-VM kernel name")
    if path.is_dir() and (path / TREE_IMAGE).is_file():
        return _from_tree(path)
    if path.is_dir() and any(path.glob("*.deb")):
        return _from_debs(path)
    raise UsageError(PARAM, f"{text}: neither a kernel build tree (with {TREE_IMAGE}) nor "
                     "a directory of .deb files (linux-image-R, linux-headers-R and what "
                     "they need)")


Run = Callable[[str, list[str]], None]


def install(entry: CatalogKernel, rootfs: Path, run: Run) -> list[str]:
    """Install ``entry`` into ``rootfs`` (its /boot, modules, headers, initrd);
    what was installed.  ``run(step, argv)`` runs a logged build step."""
    origin = Path(entry.origin)
    if entry.form is Form.DEBS:
        stage = rootfs / "tmp/pybpfmap-kernel"
        stage.mkdir(parents=True, exist_ok=True)
        debs = sorted(origin.glob("*.deb"))
        for deb in debs:
            shutil.copy(deb, stage / deb.name)
        run(f"install {len(debs)} .deb files from {origin}",
            ["chroot", str(rootfs), "apt-get", "install", "-y", "-q", "--no-install-recommends",
             *(f"/tmp/pybpfmap-kernel/{d.name}" for d in debs)])
        shutil.rmtree(stage)
        return [d.name for d in debs]
    release = entry.series
    boot = rootfs / "boot"
    shutil.copy(origin / TREE_IMAGE, boot / f"vmlinuz-{release}")
    shutil.copy(origin / ".config", boot / f"config-{release}")
    if (origin / "System.map").is_file():
        shutil.copy(origin / "System.map", boot / f"System.map-{release}")
    modules = rootfs / "lib/modules" / release
    if (origin / "modules.order").is_file():
        run(f"make modules_install ({origin})",
            ["make", "-C", str(origin), "-s", f"INSTALL_MOD_PATH={rootfs}", "modules_install"])
    modules.mkdir(parents=True, exist_ok=True)
    headers = rootfs / "usr/src" / f"linux-headers-{release}"
    shutil.rmtree(headers, ignore_errors=True)
    headers.mkdir(parents=True)
    for part in TREE_HEADERS:
        src = origin / part
        if src.is_dir():
            shutil.copytree(src, headers / part, symlinks=True)
        elif src.is_file():
            (headers / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, headers / part)
    for link in ("build", "source"):
        (modules / link).unlink(missing_ok=True)
    (modules / "build").symlink_to(f"/usr/src/linux-headers-{release}")
    run(f"depmod {release}", ["chroot", str(rootfs), "depmod", release])
    run(f"update-initramfs for {release}",
        ["chroot", str(rootfs), "update-initramfs", "-c", "-k", release])
    return [f"{TREE_IMAGE} of {origin} ({release})"]
