"""Package the built image as a local Vagrant libvirt box, usable offline.

A box is a tar of ``metadata.json``, ``Vagrantfile`` and ``box.img`` (qcow2).
Our image has no bootloader (the runner boots its kernel directly), so the
box carries ``vmlinuz`` and ``initrd.img`` too and its Vagrantfile points
vagrant-libvirt at them (``kernel``/``initrd``/``cmd_line``).  The box boots
with systemd (not the runner's stub init), gets its address by DHCP through
systemd-networkd, and has a ``vagrant`` user (password ``vagrant``, sudo
without password); Vagrant logs in with the password once and replaces it
with a fresh key pair.  Its hostname is already the Vagrantfile's
(``pybpfmap``), so Vagrant does not set it and restart the guest's network
(a minute under TCG).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

from pybpfmap.errors import EnvironmentProblem
from pybpfmap.vm.build import ensure_image
from pybpfmap.vm.catalog import CatalogKernel
from pybpfmap.vm.image import Image, cache_root

BOX_VAGRANTFILE = """\
# Vagrantfile inside the pybpfmap box (made by `pybpfmap vm box`).
require "digest"
require "fileutils"
require "pathname"

# qemu runs as libvirt-qemu and opens the kernel and initrd by path.  When the
# box directory is not reachable by other users (under a home directory of
# mode 0700, /root included), boot from copies in /var/tmp/pybpfmap-boot-UID.
def pybpfmap_boot_file(name)
  here = File.dirname(__FILE__)
  src = File.join(here, name)
  return src if File.world_readable?(src) &&
                Pathname(here).ascend.all? { |d| File.stat(d).mode & 0o001 != 0 }
  dir = "/var/tmp/pybpfmap-boot-#{Process.uid}"
  dst = File.join(dir, "#{Digest::SHA256.hexdigest(here)[0, 12]}-#{name}")
  unless File.exist?(dst) && File.size(dst) == File.size(src) &&
         File.mtime(dst) >= File.mtime(src)
    FileUtils.mkdir_p(dir, mode: 0o711)
    FileUtils.cp(src, dst)
    File.chmod(0o644, dst)
  end
  dst
end

Vagrant.configure("2") do |config|
  config.ssh.username = "vagrant"
  config.ssh.password = "vagrant"
  config.ssh.insert_key = true
  config.vm.provider :libvirt do |lv|
    lv.kernel = pybpfmap_boot_file("vmlinuz")
    lv.initrd = pybpfmap_boot_file("initrd.img")
    lv.cmd_line = "root=LABEL=pybpfmap rw console=ttyS0,115200 console=tty0 nokaslr"
    lv.disk_bus = "virtio"
  end
end
"""

NETWORK = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n"
HOSTNAME = "pybpfmap"  # config.vm.hostname in vagrant/Vagrantfile


def _sh(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise EnvironmentProblem(what, f"{' '.join(cmd)} failed: {r.stderr.strip()[-500:]}")


@contextlib.contextmanager
def _mounted(raw: Path, mnt: Path) -> Iterator[Path]:
    mnt.mkdir(parents=True, exist_ok=True)
    _sh(["mount", "-o", "loop", str(raw), str(mnt)], "mount box disk")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _make_vagrant_ready(root: Path) -> None:
    """vagrant user, sudo, DHCP and sshd in the box's filesystem (offline)."""
    def chroot(*cmd: str) -> None:
        _sh(["chroot", str(root), *cmd], "box setup")

    chroot("useradd", "--create-home", "--shell", "/bin/bash", "vagrant")
    subprocess.run(["chroot", str(root), "chpasswd"], input="vagrant:vagrant\n", text=True,
                   check=True, capture_output=True)
    sudoers = root / "etc/sudoers.d/vagrant"
    sudoers.write_text("vagrant ALL=(ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    (root / "etc/systemd/network/80-dhcp.network").write_text(NETWORK)
    (root / "etc/hostname").write_text(HOSTNAME + "\n")
    hosts = root / "etc/hosts"
    old = hosts.read_text() if hosts.exists() else "127.0.0.1\tlocalhost\n"
    kept = [line for line in old.splitlines() if not line.startswith("127.0.1.1")]
    hosts.write_text("\n".join([*kept, f"127.0.1.1\t{HOSTNAME}"]) + "\n")
    chroot("systemctl", "enable", "systemd-networkd.service", "ssh.service")
    (root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    (root / "etc/ssh/sshd_config.d/vagrant.conf").write_text(
        "PasswordAuthentication yes\nUseDNS no\n")


def make_box(kernel: CatalogKernel, output: str | Path) -> Path:
    """Write ``output`` (a .box tar) from ``kernel``'s cached image; return its path."""
    image: Image = ensure_image(kernel)
    suite = kernel.name
    if not (image.path / "root.qcow2").exists():
        raise EnvironmentProblem(str(image.path), "image has no root.qcow2")
    out = Path(output).resolve()
    work = cache_root() / f".box-{suite}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        raw = work / "disk.raw"
        _sh(["qemu-img", "convert", "-O", "raw", str(image.disk), str(raw)], "qemu-img")
        with _mounted(raw, work / "mnt") as root:
            if not (root / "usr/sbin/sshd").exists():
                raise EnvironmentProblem("box", "image has no openssh-server; rebuild it "
                                         "with the current vagrant/provision.sh")
            _make_vagrant_ready(root)
        _sh(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "box.img")], "qemu-img")
        raw.unlink()
        size = json.loads(subprocess.run(["qemu-img", "info", "--output=json",
                                          str(work / "box.img")], capture_output=True,
                                         text=True, check=True).stdout)["virtual-size"]
        (work / "metadata.json").write_text(json.dumps(
            {"provider": "libvirt", "format": "qcow2",
             "virtual_size": (size + (1 << 30) - 1) >> 30}) + "\n")
        (work / "Vagrantfile").write_text(BOX_VAGRANTFILE)
        shutil.copy(image.kernel, work / "vmlinuz")
        shutil.copy(image.initrd, work / "initrd.img")
        tmp = out.with_name(out.name + ".part")
        with tarfile.open(tmp, "w") as tar:
            for name in ("metadata.json", "Vagrantfile", "box.img", "vmlinuz", "initrd.img"):
                tar.add(work / name, arcname=name)
        tmp.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
