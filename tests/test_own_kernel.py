"""A kernel you bring: ``--kernel PATH`` (a directory of .deb files or a kernel
build tree), checked before any boot and keyed by content; booted for real
(a Debian 6.1 ABI the catalog does not install) when the test VM can run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pybpfmap.errors import PybpfmapError
from pybpfmap.vm import catalog, kconfig, own
from pybpfmap.vm.catalog import Form
from pybpfmap.vm.image import image_key
from tests import own_debs
from tests.helpers import json_out

RELEASE = "9.9.0-1-test"
GOOD = kconfig.fragment()


def fake_deb(dest: Path, package: str, files: dict[str, str]) -> Path:
    """A real .deb (dpkg-deb --build) holding ``files``."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not installed")
    root = dest / f".{package}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@t>\n"
        "Description: test\n")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    out = dest / f"{package}_1_amd64.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(out)],
                   check=True, capture_output=True)
    shutil.rmtree(root)
    return out


def debs(dest: Path, config: str = GOOD, headers: bool = True) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    fake_deb(dest, f"linux-image-{RELEASE}", {f"boot/config-{RELEASE}": config})
    if headers:
        fake_deb(dest, f"linux-headers-{RELEASE}", {"usr/src/x": ""})
    return dest


def tree(dest: Path, config: str = GOOD, image: bytes = b"bzImage") -> Path:
    (dest / "arch/x86/boot").mkdir(parents=True)
    (dest / "arch/x86/boot/bzImage").write_bytes(image)
    (dest / "include/config").mkdir(parents=True)
    (dest / "include/config/kernel.release").write_text(RELEASE + "\n")
    (dest / ".config").write_text(config)
    return dest


def test_debs_directory_is_an_entry_named_by_its_release(tmp_path):
    entry = own.resolve(str(debs(tmp_path / "a")))
    assert (entry.name, entry.form, entry.brought, entry.preempt_rt) == (
        RELEASE, Form.DEBS, True, False)
    assert entry.matches_release(RELEASE) and not entry.matches_release(RELEASE + "x")
    assert entry.userspace == "trixie"  # 9.9 >= 6.12: trixie's BCC knows its headers


def test_image_key_follows_content_not_path(tmp_path):
    a = own.resolve(str(debs(tmp_path / "a")))
    copy = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "a", copy)
    b = own.resolve(str(copy))
    assert a.origin != b.origin and image_key(a) == image_key(b)
    t1 = own.resolve(str(tree(tmp_path / "t1")))
    t2 = own.resolve(str(tree(tmp_path / "t2", image=b"patched bzImage")))
    assert image_key(t1) != image_key(t2) and t1.name == t2.name
    assert image_key(t1) not in {image_key(k) for k in catalog.KERNELS}


def test_preempt_rt_comes_from_the_config(tmp_path):
    entry = own.resolve(str(tree(tmp_path / "t", GOOD + "CONFIG_PREEMPT_RT=y\n")))
    assert entry.preempt_rt and entry.form is Form.TREE


def test_a_kernel_that_cannot_run_the_relay_is_refused_before_any_boot(tmp_path):
    config = GOOD.replace("CONFIG_VIRTIO_CONSOLE=y\n", "").replace("CONFIG_9P_FS=y\n", "")
    with pytest.raises(PybpfmapError) as e:
        own.resolve(str(debs(tmp_path / "d", config)))
    assert "CONFIG_VIRTIO_CONSOLE" in e.value.meaning and "CONFIG_9P_FS" in e.value.meaning
    # a missing feature option is not fatal: the entry is made, kconfig --check names it
    own.resolve(str(tree(tmp_path / "t", GOOD.replace("CONFIG_KPROBES=y\n", ""))))


def test_debs_without_headers_are_refused(tmp_path):
    with pytest.raises(PybpfmapError, match=f"no linux-headers-{RELEASE}"):
        own.resolve(str(debs(tmp_path / "d", headers=False)))


def test_cli_names_the_path_problem_in_one_line(pybpfmap, tmp_path):
    for path, why in ((tmp_path / "missing", "no such file or directory"),
                      (tmp_path, "neither a kernel build tree")):
        proc = pybpfmap("vm", "run", "--kernel", f"bookworm,{path}", "--", "true", expect=2)
        assert why in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- booted for real --------------------------------------------------------

@pytest.fixture(scope="module")
def brought(tmp_path_factory) -> Path:
    """A Debian 6.1 ABI the catalog does not install, as a directory of .debs
    (``$PYBPFMAP_VM_CACHE/debs``, where .ci/run fetched it and built its image)."""
    from pybpfmap.vm.image import cache_root

    found = own_debs.download(cache_root() / "debs", own_debs.catalog_release())
    if found is None:
        pytest.skip("apt offers no bookworm 6.1 kernel with headers other than the catalog's")
    return found


@pytest.mark.vm
def test_brought_kernel_boots_is_listed_and_gets_info_and_stress_rows(pybpfmap, brought,
                                                                      tmp_path):
    """It boots (info runs in it, on the release its .debs say), ``vm list`` shows
    it with where it came from, and two stress rows in one boot: re-entry (kprobes)
    and nmi-slot, whose prediction rests on the 6.1.9 stable backport of the hash
    mask fix, read from the kernel's banner ("Debian 6.1.N"), not from 6.1.0-N."""
    release = own.resolve(str(brought)).name
    (info,) = json_out(pybpfmap("info", "--kernel", str(brought), "--json",
                                "--results", str(tmp_path / "i"), timeout=900))
    assert info["kernel_release"] == release
    assert {f["source"] for f in info["facts"]} >= {"probed"}, info["facts"]
    listed = {r["name"]: r for r in json_out(pybpfmap("vm", "list", "--json"))}
    # listed with where its image was first built from (the image is keyed by content:
    # the same .debs elsewhere share it)
    assert listed[release]["built"] and Path(listed[release]["origin"]).is_absolute()
    (run,) = json_out(pybpfmap("stress", "--kernel", str(brought), "--scenario",
                               "reentry,nmi-slot", "--types", "hash/prealloc", "--no-isolate",
                               "--duration", "3", "--json", "--results", str(tmp_path / "s"),
                               timeout=900))
    assert [r["scenario"] for r in run["rows"]] == ["reentry", "nmi-slot"]
    for row in run["rows"]:
        assert (row["outcome"], row["as_predicted"]) == ("PASS", True), row["reasons"]
        assert any("EBUSY" in errs for errs in row["errors"].values()), row["errors"]
    mask = next(f for f in run["facts"] if f["commit"] == "9f907439dc80")
    assert mask["present"] and "its backport" in mask["how"], mask
