"""vagrant/Vagrantfile's single-threaded TCG qemu wrapper, run on the host.

libvirt starts TCG domains with ``-accel tcg`` (multi-threaded on x86) and has
no setting for the thread mode, so for "tcg" the Vagrantfile makes the domain's
emulator a wrapper that rewrites that one argument.  These tests load the
Vagrantfile in Ruby (with a stand-in for Vagrant's configure), make the wrapper
around a fake qemu that prints its arguments, and check what qemu would get.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

VAGRANTFILE = Path(__file__).resolve().parent.parent / "vagrant" / "Vagrantfile"
LOAD = """
module Vagrant
  def self.configure(*) end
end
load ARGV.shift
puts pybpfmap_single_threaded_tcg_qemu
"""

pytestmark = pytest.mark.skipif(shutil.which("ruby") is None,
                                reason="ruby not installed (it comes with vagrant: "
                                       "sudo vagrant/provision.sh --host)")


def make_wrapper(tmp_path: Path) -> subprocess.CompletedProcess:
    fake = tmp_path / "qemu"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYBPFMAP_QEMU": str(fake)}
    return subprocess.run(["ruby", "-e", LOAD, str(VAGRANTFILE)], env=env,
                          capture_output=True, text=True, timeout=60)


def test_wrapper_makes_tcg_single_threaded_and_changes_nothing_else(tmp_path):
    made = make_wrapper(tmp_path)
    assert made.returncode == 0, made.stderr
    wrapper = Path(made.stdout.strip())
    assert wrapper.parent == tmp_path / f"pybpfmap-qemu-{os.getuid()}"
    assert wrapper.stat().st_mode & 0o777 == 0o755
    argv = ["-name", "guest=x", "-accel", "tcg", "-cpu", "qemu64", "tcg",
            "-append", "a b  c", "-accel", "kvm", ""]
    out = subprocess.run([str(wrapper), *argv], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    want = list(argv)
    want[3] = "tcg,thread=single"   # only the value of -accel, and only "tcg"
    assert out.stdout.split("\n")[:-1] == want


def test_a_directory_others_can_write_is_refused(tmp_path):
    shared = tmp_path / f"pybpfmap-qemu-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    made = make_wrapper(tmp_path)
    assert made.returncode != 0
    assert f"{shared} is not a directory of ours that only we can write" in made.stderr
    assert list(shared.iterdir()) == []
