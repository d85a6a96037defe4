"""Build and cache the test VM's disk image from Debian packages only.

An image is a directory in the cache (``/var/cache/pybpfmap/vm/<suite>-<key>/``,
``PYBPFMAP_VM_CACHE`` overrides the root) holding ``root.qcow2`` (one ext4
filesystem, no partition table), the kernel, its initrd, ``System.map`` and
``image.json``.  ``key`` hashes everything the image is made from
(``vagrant/provision.sh``, the suite, the stub init, :data:`BUILDER_VERSION`), so
an image is rebuilt only when one of those changes.  Runs never write to it:
the runner boots a qcow2 overlay on top.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pybpfmap.errors import EnvironmentProblem, UsageError

BUILDER_VERSION = 1
SUITES = ("bookworm", "trixie")
PROVISION = Path(__file__).resolve().parents[2] / "vagrant" / "provision.sh"

# Installed as /sbin/pybpfmap-init and booted with init=.  It only mounts the
# per-run control share and hands over to the init script the runner put there
# (pybpfmap/vm/guest.py), so changing that script needs no image rebuild.
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

Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"pybpfmap vm: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Image:
    """A built image: paths of its parts and the guest kernel's release."""

    path: Path
    suite: str
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


def cache_root() -> Path:
    """Where images live: ``$PYBPFMAP_VM_CACHE`` or ``/var/cache/pybpfmap/vm``."""
    return Path(os.environ.get("PYBPFMAP_VM_CACHE", "/var/cache/pybpfmap/vm"))


def image_key(suite: str) -> str:
    """Hash of the image's inputs; a new key means a new build."""
    if not PROVISION.is_file():
        raise EnvironmentProblem(str(PROVISION), "provisioning script not found; "
                                 "run pybpfmap from its source tree")
    h = hashlib.sha256()
    for part in (PROVISION.read_bytes(), suite.encode(), STUB_INIT.encode(),
                 str(BUILDER_VERSION).encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def debian_mirror() -> str:
    """The Debian mirror apt is configured with (from /etc/apt/sources.list*)."""
    files = [Path("/etc/apt/sources.list")]
    files += sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for f in files:
        with contextlib.suppress(OSError):
            text = f.read_text()
            # deb822 (URIs: ...) and one-line (deb URI suite ...) formats.
            for uri in re.findall(r"^(?:URIs:|deb)\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M):
                if uri.rstrip("/").endswith("/debian"):
                    return uri.rstrip("/")
    raise EnvironmentProblem("/etc/apt/sources.list", "no Debian mirror (a URI ending in "
                             "/debian) configured; the image is built from it")


def find_image(suite: str) -> Image | None:
    """The cached image for ``suite`` if one with the current key exists."""
    d = cache_root() / f"{suite}-{image_key(suite)}"
    meta = d / "image.json"
    if not meta.is_file():
        return None
    info = json.loads(meta.read_text())
    return Image(d, suite, info["key"], info["release"])


def ensure_image(suite: str, progress: Progress = _stderr) -> Image:
    """The cached image for ``suite``, building it first if it is missing or stale."""
    return find_image(suite) or build_image(suite, progress)


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _run(step: str, cmd: list[str], log: Path, progress: Progress) -> None:
    t0 = time.monotonic()
    progress(f"{step} ...")
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-15:])
        sys.stderr.write(tail)
        raise EnvironmentProblem(step, f"failed with status {r.returncode} (log: {log})")
    progress(f"{step}: done in {time.monotonic() - t0:.0f} s")


@contextlib.contextmanager
def _chroot_mounts(root: Path) -> Iterator[None]:
    """proc/sys/dev mounted in the chroot, always unmounted again."""
    with contextlib.ExitStack() as stack:
        for fstype, src, dst in (("proc", "proc", "proc"), ("sysfs", "sysfs", "sys"),
                                 (None, "/dev", "dev"), (None, "/dev/pts", "dev/pts")):
            target = root / dst
            target.mkdir(exist_ok=True)
            args = ["--bind", src] if fstype is None else ["-t", fstype, src]
            subprocess.run(["mount", *args, str(target)], check=True)
            stack.callback(subprocess.run, ["umount", "-l", str(target)], check=False)
        yield


def build_image(suite: str, progress: Progress = _stderr) -> Image:
    """debootstrap ``suite``, run ``provision.sh --guest`` in a chroot, make the disk."""
    if suite not in SUITES:
        raise UsageError("--kernel", f"unknown suite {suite!r}; one of {', '.join(SUITES)}")
    if os.geteuid() != 0:
        raise EnvironmentProblem("vm build", "needs root (debootstrap, chroot)")
    for tool in ("debootstrap", "mkfs.ext4", "qemu-img"):
        if not shutil.which(tool):
            raise EnvironmentProblem(tool, "not installed (sudo vagrant/provision.sh --host)")
    root = cache_root()
    key = image_key(suite)
    with _lock(root):
        done = find_image(suite)
        if done:
            return done
        final = root / f"{suite}-{key}"
        work = root / f".build-{suite}-{key}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            image = _build(suite, key, work, final, progress)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for old in root.glob(f"{suite}-*"):
            if old != final:
                progress(f"removing stale image {old}")
                shutil.rmtree(old, ignore_errors=True)
        return image


def _build(suite: str, key: str, work: Path, final: Path, progress: Progress) -> Image:
    t0 = time.monotonic()
    mirror = debian_mirror()
    log = work.parent / f"build-{suite}.log"
    log.write_text(f"pybpfmap vm build {suite} key {key} mirror {mirror}\n")
    progress(f"building {suite} image from {mirror} (log: {log})")
    rootfs = work / "rootfs"
    _run(f"[1/4] debootstrap {suite}", ["debootstrap", "--variant=minbase", suite,
                                        str(rootfs), mirror], log, progress)
    shutil.copy(PROVISION, rootfs / "root/provision.sh")
    shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    policy = rootfs / "usr/sbin/policy-rc.d"  # no services start in the chroot
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    with _chroot_mounts(rootfs):
        _run("[2/4] provision.sh --guest (kernel, headers, bcc, pytest, bpftool)",
             ["chroot", str(rootfs), "/bin/sh", "/root/provision.sh", "--guest"], log, progress)
        subprocess.run(["chroot", str(rootfs), "apt-get", "clean"], check=False)
    policy.unlink()
    (rootfs / "root/provision.sh").unlink()
    shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
    (rootfs / "etc/hostname").write_text("pybpfmap-vm\n")
    (rootfs / "etc/fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    init = rootfs / "sbin/pybpfmap-init"
    init.write_text(STUB_INIT)
    init.chmod(0o755)
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise EnvironmentProblem("provision.sh --guest", f"installed no kernel (log: {log})")
    release = kernels[-1].name.removeprefix("vmlinuz-")
    work_boot = work / "out"
    work_boot.mkdir()
    for src, dst in ((f"vmlinuz-{release}", "vmlinuz"), (f"initrd.img-{release}", "initrd.img"),
                     (f"System.map-{release}", "System.map"), (f"config-{release}", "config")):
        shutil.copy(rootfs / "boot" / src, work_boot / dst)
    used_mb = int(subprocess.run(["du", "-sxm", str(rootfs)], capture_output=True,
                                 text=True, check=True).stdout.split()[0])
    size_mb = used_mb * 13 // 10 + 1024  # room for what tests write (overlay takes it)
    raw = work / "root.raw"
    _run(f"[3/4] mkfs.ext4 ({used_mb} MB used, {size_mb} MB filesystem)",
         ["mkfs.ext4", "-q", "-F", "-L", "pybpfmap", "-d", str(rootfs), str(raw), f"{size_mb}M"],
         log, progress)
    _run("[4/4] qemu-img convert to qcow2",
         ["qemu-img", "convert", "-O", "qcow2", str(raw), str(work_boot / "root.qcow2")],
         log, progress)
    info = {"suite": suite, "key": key, "release": release, "mirror": mirror,
            "builder_version": BUILDER_VERSION, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                      time.gmtime()),
            "build_seconds": round(time.monotonic() - t0)}
    (work_boot / "image.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    work_boot.rename(final)
    progress(f"image ready: {final} (kernel {release}, {info['build_seconds']} s)")
    return Image(final, suite, key, release)
