"""Build the test VM's disk images from Debian packages only (see :mod:`pybpfmap.vm.image`
for where they are cached and how one is found).

One image per catalog kernel (:mod:`pybpfmap.vm.catalog`), in two stages:

1. the *base* of a Debian userspace suite: ``debootstrap`` and
   ``vagrant/provision.sh --guest`` in a chroot (tools, BCC, the suite's own
   kernel and headers).  Kept as a directory under the cache, keyed by
   ``provision.sh`` and the suite, so that kernels on the same userspace
   (bullseye, bullseye-rt and bookworm all run bookworm's) build it once;
2. the *image*: a copy of the base with the catalog kernel installed in place
   of the suite's own (newest package matching the entry that has headers),
   ``map_perf_test`` built for it (``vagrant/map-perf-test.sh``, when the kernel
   source is available), then one ext4 filesystem (no partition table) as
   ``root.qcow2`` beside the kernel, its initrd, ``config`` and ``image.json``.

An image is rebuilt only when its key (:func:`pybpfmap.vm.image.image_key`)
changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from pybpfmap import procs
from pybpfmap.errors import EnvironmentProblem
from pybpfmap.vm import own
from pybpfmap.vm.catalog import CatalogKernel
from pybpfmap.vm.image import (
    BUILDER_VERSION,
    PEER_DIR,
    PEER_RECIPE,
    PROVISION,
    STUB_INIT,
    Image,
    base_key,
    cache_root,
    find_image,
    image_dir,
    image_key,
    is_image_of,
    locked,
)

Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"pybpfmap vm: {msg}", file=sys.stderr, flush=True)


def debian_mirror() -> str:
    """The Debian mirror apt is configured with (from /etc/apt/sources.list*)."""
    for uri in _configured_uris():
        if uri.endswith("/debian"):
            return uri
    raise EnvironmentProblem("/etc/apt/sources.list", "no Debian mirror (a URI ending in "
                             "/debian) configured; the image is built from it")


def debian_security_mirror(mirror: str) -> str:
    """The security archive: the one apt is configured with, else ``<mirror>-security``."""
    for uri in _configured_uris():
        if uri.endswith("/debian-security"):
            return uri
    return mirror + "-security"


def _configured_uris() -> list[str]:
    files = [Path("/etc/apt/sources.list")]
    files += sorted(Path("/etc/apt/sources.list.d").glob("*"))
    uris = []
    for f in files:
        with contextlib.suppress(OSError):
            text = f.read_text()
            # deb822 (URIs: ...) and one-line (deb URI suite ...) formats.
            uris += [u.rstrip("/") for u in re.findall(
                r"^(?:URIs:|deb)\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M)]
    return uris


def ensure_image(entry: CatalogKernel, progress: Progress = _stderr) -> Image:
    """The cached image of ``entry``, building it first if it is missing or stale."""
    return find_image(entry) or build_image(entry, progress)

def _run(step: str, cmd: list[str], log: Path, progress: Progress,
         env: dict[str, str] | None = None) -> None:
    t0 = time.monotonic()
    progress(f"{step} ...")
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        # Its own process group (procs): Ctrl-C or a failure here stops what the
        # step started (apt, dpkg, compilers in the chroot) too.
        with procs.Child(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=None if env is None else {**os.environ, **env}) as child:
            status = child.wait()
    if status != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-15:])
        sys.stderr.write(tail)
        raise EnvironmentProblem(step, f"failed with status {status} (log: {log})")
    progress(f"{step}: done in {time.monotonic() - t0:.0f} s")


def _chroot_out(root: Path, *cmd: str) -> str:
    r = subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    return r.stdout if r.returncode == 0 else ""


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


def _check_tools() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem("vm build", "needs root (debootstrap, chroot)")
    for tool in ("debootstrap", "mkfs.ext4", "qemu-img"):
        if not shutil.which(tool):
            raise EnvironmentProblem(tool, "not installed (sudo vagrant/provision.sh --host)")


def build_image(entry: CatalogKernel, progress: Progress = _stderr) -> Image:
    """Build ``entry``'s image (its base first, if needed)."""
    _check_tools()
    root = cache_root()
    key = image_key(entry)
    with locked(root):
        done = find_image(entry)
        if done:
            return done
        mirror = debian_mirror()
        log = root / f"build-{entry.name}.log"
        log.write_text(f"pybpfmap vm build {entry.name} key {key} mirror {mirror}\n")
        progress(f"building the {entry.name} image ({entry.summary}) from {mirror} "
                 f"(log: {log})")
        base = _ensure_base(entry.userspace, mirror, log, progress)
        final = image_dir(entry.name, key)
        work = root / f".build-{entry.name}-{key}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            image = _build(entry, key, base, mirror, work, final, log, progress)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for old in root.iterdir():
            # a kernel brought twice under one release (patched, unpatched) keeps both
            if not entry.brought and is_image_of(old, entry.name) and old != final:
                progress(f"removing stale image {old}")
                shutil.rmtree(old, ignore_errors=True)
        return image


def _ensure_base(suite: str, mirror: str, log: Path, progress: Progress) -> Path:
    """The base rootfs of ``suite`` (debootstrap + provision.sh --guest), built once."""
    root = cache_root()
    key = base_key(suite)
    base = root / f".base-{suite}-{key}"
    if (base / "done").is_file():
        progress(f"base {suite} userspace: cached ({base})")
        return base / "rootfs"
    for old in root.glob(f".base-{suite}-*"):
        shutil.rmtree(old, ignore_errors=True)
    rootfs = base / "rootfs"
    base.mkdir(parents=True)
    _run(f"debootstrap {suite}", ["debootstrap", "--variant=minbase", suite, str(rootfs),
                                  mirror], log, progress)
    shutil.copy(PROVISION, rootfs / "root/provision.sh")
    shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    policy = rootfs / "usr/sbin/policy-rc.d"  # no services start in the chroot
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    with _chroot_mounts(rootfs):
        _run(f"provision.sh --guest in {suite} (kernel, headers, bcc, pytest, bpftool)",
             ["chroot", str(rootfs), "/bin/sh", "/root/provision.sh", "--guest"], log, progress)
        subprocess.run(["chroot", str(rootfs), "apt-get", "clean"], check=False)
    (rootfs / "root/provision.sh").unlink()
    (base / "done").write_text(f"{suite} {key}\n")
    return rootfs


def _with_headers(root: Path, entry: CatalogKernel) -> list[str]:
    """Packages matching ``entry.image_pattern`` whose headers exist, newest first."""
    names = _chroot_out(root, "apt-cache", "pkgnames", "linux-image-").split()
    found = [n for n in names if re.fullmatch(entry.image_pattern, n)]

    def version(name: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", name))

    out = []
    for name in sorted(found, key=version, reverse=True):
        policy = _chroot_out(root, "apt-cache", "policy", entry.headers_for(name))
        if re.search(r"Candidate: (?!\(none\))", policy):
            out.append(name)
    if not out:
        raise EnvironmentProblem(f"--kernel {entry.name}", "no package matching "
                                 f"{entry.image_pattern!r} with matching headers in "
                                 f"{', '.join(entry.sources)}: the mirror no longer serves it")
    return out


def _install_kernel(entry: CatalogKernel, rootfs: Path, mirror: str, log: Path,
                    progress: Progress) -> list[str]:
    """Install the entry's kernel + headers in place of the suite's own; their names."""
    lines = [s.format(mirror=mirror, security=debian_security_mirror(mirror))
             for s in entry.sources]
    (rootfs / "etc/apt/sources.list.d/pybpfmap-kernel.list").write_text(
        "# pybpfmap test-VM kernel (pybpfmap/vm/catalog.py)\n" + "\n".join(lines) + "\n")
    _run("apt-get update (kernel sources)", ["chroot", str(rootfs), "apt-get", "update", "-q"],
         log, progress)
    target = ["-t", entry.target_release] if entry.target_release else []
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    # The index may name a package the mirror no longer has (seen: bullseye's
    # newest -rt images answer 404 while their headers download): newest first,
    # the first pair that installs wins.
    failures = []
    for image in _with_headers(rootfs, entry)[:4]:
        packages = [image, entry.headers_for(image)]
        try:
            _run(f"install {' '.join(packages)}",
                 ["chroot", str(rootfs), "apt-get", "install", "-y", "-q",
                  "--no-install-recommends", *target, *packages], log, progress, env)
            break
        except EnvironmentProblem as e:
            failures.append(f"{image}: {e.meaning}")
    else:
        raise EnvironmentProblem(f"--kernel {entry.name}", "no kernel package would install: "
                                 + "; ".join(failures))
    _purge_suite_kernel(rootfs, image.removeprefix("linux-image-"), log, progress)
    return packages


def _purge_suite_kernel(rootfs: Path, keep: str, log: Path, progress: Progress) -> None:
    """Remove the suite's own kernel, so that the image has one kernel and its
    headers: release ``keep``'s stay (the arch packages and metapackages go; the
    -common ones follow by autoremove, the kept kernel's own -common[-rt] stays)."""
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    keep_packages = {f"linux-image-{keep}", f"linux-headers-{keep}"}
    old = [p for p in _chroot_out(rootfs, "dpkg-query", "-W", "-f", "${Package}\\n").split()
           if re.fullmatch(r"linux-(image|headers)-(\d\S*-)?amd64", p)
           and p not in keep_packages]
    if old:
        _run(f"purge the suite's kernel ({' '.join(old)})",
             ["chroot", str(rootfs), "apt-get", "purge", "-y", "-q", *old], log, progress, env)
        _run("apt-get autoremove", ["chroot", str(rootfs), "apt-get", "autoremove", "-y",
                                    "-q", "--purge"], log, progress, env)


def _build(entry: CatalogKernel, key: str, base: Path, mirror: str, work: Path, final: Path,
           log: Path, progress: Progress) -> Image:
    t0 = time.monotonic()
    rootfs = work / "rootfs"
    _run(f"copy the base {entry.userspace} userspace", ["cp", "-a", str(base), str(rootfs)],
         log, progress)
    packages: list[str] = []
    peer = "not built"
    with _chroot_mounts(rootfs):
        if entry.brought:
            packages = own.install(entry, rootfs, lambda step, cmd: _run(
                step, cmd, log, progress, {"DEBIAN_FRONTEND": "noninteractive"}))
            _purge_suite_kernel(rootfs, entry.series, log, progress)
            peer = "not built: the kernel source of a kernel you bring is not fetched"
        elif entry.own_kernel:
            packages = _install_kernel(entry, rootfs, mirror, log, progress)
        release = _only_kernel(rootfs, log)
        if PEER_RECIPE.is_file() and not entry.brought:
            peer = _build_peer(rootfs, release, log, progress)
        subprocess.run(["chroot", str(rootfs), "apt-get", "clean"], check=False)
    shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
    (rootfs / "etc/hostname").write_text("pybpfmap-vm\n")
    (rootfs / "etc/fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    init = rootfs / "sbin/pybpfmap-init"
    init.write_text(STUB_INIT)
    init.chmod(0o755)
    out = work / "out"
    out.mkdir()
    for src, dst, needed in ((f"vmlinuz-{release}", "vmlinuz", True),
                             (f"initrd.img-{release}", "initrd.img", True),
                             # newer Debian kernels ship no System.map in /boot (the
                             # runner names addresses with the guest's kallsyms anyway)
                             (f"System.map-{release}", "System.map", False),
                             (f"config-{release}", "config", False)):
        if needed or (rootfs / "boot" / src).exists():
            shutil.copy(rootfs / "boot" / src, out / dst)
    used_mb = int(subprocess.run(["du", "-sxm", str(rootfs)], capture_output=True,
                                 text=True, check=True).stdout.split()[0])
    size_mb = used_mb * 13 // 10 + 1024  # room for what tests write (overlay takes it)
    raw = work / "root.raw"
    _run(f"mkfs.ext4 ({used_mb} MB used, {size_mb} MB filesystem)",
         ["mkfs.ext4", "-q", "-F", "-L", "pybpfmap", "-d", str(rootfs), str(raw), f"{size_mb}M"],
         log, progress)
    _run("qemu-img convert to qcow2",
         ["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / "root.qcow2")],
         log, progress)
    info = {"name": entry.name, "userspace": entry.userspace, "key": key,
            "base_key": base_key(entry.userspace), "release": release,
            "kernel_packages": packages or ["linux-image-amd64 (the suite's own)"],
            "map_perf_test": peer, "mirror": mirror, "builder_version": BUILDER_VERSION,
            "catalog": asdict(entry),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - t0)}
    (out / "image.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)
    progress(f"image ready: {final} (kernel {release}, {info['build_seconds']} s)")
    return Image(final, entry.name, key, release)


def _only_kernel(rootfs: Path, log: Path) -> str:
    """The release of the one kernel installed in ``rootfs``."""
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise EnvironmentProblem("vm build", f"expected one kernel in the image, found "
                                 f"{[k.name for k in kernels] or 'none'} (log: {log})")
    return kernels[0].name.removeprefix("vmlinuz-")


def _build_peer(rootfs: Path, release: str, log: Path, progress: Progress) -> str:
    """Build samples/bpf/map_perf_test for ``release`` in the image; what happened.

    A kernel whose source Debian no longer serves cannot have it: that is
    recorded (``pybpfmap bench --peer`` then says so), it does not fail the build.
    """
    shutil.copy(PEER_RECIPE, rootfs / "root/map-perf-test.sh")
    try:
        _run(f"build samples/bpf/map_perf_test for {release}",
             ["chroot", str(rootfs), "/bin/sh", "-c",
              f". /root/map-perf-test.sh && build_map_perf_test {release} {PEER_DIR}"],
             log, progress, {"DEBIAN_FRONTEND": "noninteractive"})
        return f"built in {PEER_DIR}"
    except EnvironmentProblem as e:
        progress(f"map_perf_test not built: {e.meaning}")
        return f"not built: {e.meaning}"
    finally:
        (rootfs / "root/map-perf-test.sh").unlink(missing_ok=True)
