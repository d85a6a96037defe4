"""``pybpfmap vm kconfig``: the configuration fragment every feature needs, and
``--check CONFIG`` naming what a configuration lacks and what that breaks
(:mod:`pybpfmap.vm.kconfig`).  No kernel is booted or built here."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pybpfmap.errors import EnvironmentProblem
from pybpfmap.vm import kconfig
from pybpfmap.vm.image import cache_root
from tests.helpers import json_out

GOOD = kconfig.fragment()
DEBIAN_6_1 = Path("/usr/src/linux-headers-6.1.0-57-amd64/.config")


def without(text: str, *names: str) -> str:
    """``text`` with the lines setting CONFIG_<name> removed (an option not set)."""
    drop = tuple(f"CONFIG_{n}=" for n in names)
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(drop))


def debian_config(name: str) -> Path:
    """The configuration Debian built catalog kernel ``name``'s image with (its
    /boot/config-R, kept beside the cached image), or skip saying why there is none."""
    for folder in sorted(cache_root().glob(f"{name}-*")):
        try:
            built = json.loads((folder / "image.json").read_text())["name"]
        except (OSError, ValueError, KeyError):
            continue
        if built == name and (folder / "config").is_file():
            return folder / "config"
    pytest.skip(f"no cached {name} image with its kernel's config in {cache_root()} "
                f"(pybpfmap vm build --kernel {name})")


def test_the_fragment_satisfies_its_own_check():
    config = kconfig.parse(GOOD)
    assert kconfig.check(config) == []
    assert kconfig.require_boot(config, "fragment") == []
    # every option, and every line a CONFIG_ line or a comment (merge_config.sh takes it)
    assert {o.name for o in kconfig.OPTIONS} <= config.keys()
    assert all(line.startswith(("CONFIG_", "# ")) for line in GOOD.splitlines())


def test_a_config_without_kprobes_is_named_with_stress():
    (missing,) = kconfig.check(kconfig.parse(without(GOOD, "KPROBES")))
    assert missing.option.name == "KPROBES" and missing.value is None
    assert missing.option.feature is kconfig.STRESS and not missing.option.boot
    assert "stress" in missing.render() and missing.to_json()["feature"] == "stress"
    # not a boot option: the kernel can still run everything else
    assert kconfig.require_boot(kconfig.parse(without(GOOD, "KPROBES")), "x") == [missing]


def test_missing_boot_options_raise_with_their_names_boot_first():
    config = kconfig.parse(without(GOOD, "MEMCG", "VIRTIO_CONSOLE", "9P_FS"))
    assert [m.option.name for m in kconfig.check(config)] == ["VIRTIO_CONSOLE", "9P_FS",
                                                              "MEMCG"]
    with pytest.raises(EnvironmentProblem) as e:
        kconfig.require_boot(config, "--kernel ./debs")
    assert e.value.param == "--kernel ./debs"
    assert "CONFIG_VIRTIO_CONSOLE not set (relay)" in e.value.meaning
    assert "CONFIG_9P_FS not set (share)" in e.value.meaning
    assert "MEMCG" not in e.value.meaning  # a feature's option is not a boot error


def test_module_values_serve_only_where_a_module_is_loaded():
    as_module = {o.name: "m" for o in kconfig.OPTIONS} | {"MODULES": "y"}
    missing = {m.option.name for m in kconfig.check(as_module)}
    assert missing == {o.name for o in kconfig.OPTIONS if not o.module_ok}
    for name in ("VIRTIO_BLK", "VIRTIO_CONSOLE", "9P_FS", "VETH", "NET_CLS_BPF"):
        assert name not in missing
    for name in ("KPROBES", "BPF_SYSCALL", "MEMCG", "PCI"):
        assert name in missing
    (kprobes,) = [m for m in kconfig.check(as_module) if m.option.name == "KPROBES"]
    assert kprobes.render().startswith("CONFIG_KPROBES (=m, needs y)")


def test_a_gzipped_config_reads_like_proc_config_gz(tmp_path):
    plain, packed = tmp_path / "config", tmp_path / "config.gz"
    plain.write_text(GOOD)
    packed.write_bytes(gzip.compress(GOOD.encode()))
    assert kconfig.read(packed) == kconfig.read(plain) == kconfig.parse(GOOD)


def test_unreadable_or_foreign_files_are_environment_problems(tmp_path):
    with pytest.raises(EnvironmentProblem) as e:
        kconfig.read(tmp_path / "missing")
    assert e.value.err == 2  # ENOENT, an int until rendered
    (tmp_path / "text").write_text("hello\n")
    with pytest.raises(EnvironmentProblem, match="not a kernel configuration"):
        kconfig.read(tmp_path / "text")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b" + b"\0" * 20)
    with pytest.raises(EnvironmentProblem, match="not a gzip file"):
        kconfig.read(tmp_path / "bad.gz")


# -- the command --------------------------------------------------------------

def test_cli_prints_the_fragment(pybpfmap):
    assert pybpfmap("vm", "kconfig").stdout == GOOD


def test_cli_check_statuses(pybpfmap, tmp_path):
    good, features, noboot = tmp_path / "good", tmp_path / "features", tmp_path / "noboot.gz"
    good.write_text(GOOD)
    features.write_text(without(GOOD, "KPROBES", "KALLSYMS_ALL"))
    noboot.write_bytes(gzip.compress(without(GOOD, "MEMCG", "VIRTIO_CONSOLE").encode()))

    ok = pybpfmap("vm", "kconfig", "--check", str(good))
    assert "every option" in ok.stdout and ok.stderr == ""
    assert json_out(pybpfmap("vm", "kconfig", "--check", str(good), "--json")) == []

    p = pybpfmap("vm", "kconfig", "--check", str(features), expect=1)
    assert "CONFIG_KPROBES" in p.stdout and "stress" in p.stdout, p.stdout
    assert "CONFIG_KALLSYMS_ALL" in p.stdout and p.stderr == ""
    records = json_out(pybpfmap("vm", "kconfig", "--check", str(features), "--json", expect=1))
    assert [(r["option"], r["feature"], r["boot"]) for r in records] == [
        ("CONFIG_KPROBES", "stress", False), ("CONFIG_KALLSYMS_ALL", "lock names", False)]

    p = pybpfmap("vm", "kconfig", "--check", str(noboot), expect=3)
    (error,) = p.stderr.strip().splitlines()
    assert "cannot run in the test VM" in error and "CONFIG_VIRTIO_CONSOLE" in error, error
    rows = [line.split()[0] for line in p.stdout.splitlines()[2:]]
    assert rows == ["CONFIG_VIRTIO_CONSOLE", "CONFIG_MEMCG"]  # boot first, then the rest


def test_cli_missing_file_is_one_line_naming_the_errno(pybpfmap, tmp_path):
    p = pybpfmap("vm", "kconfig", "--check", str(tmp_path / "nope"), expect=2)
    (line,) = p.stderr.strip().splitlines()
    assert "--check" in line and "ENOENT" in line and "No such file" in line, line
    assert "Traceback" not in p.stderr and p.stdout == ""


# -- Debian's own configurations ----------------------------------------------

def test_debian_5_10_config_passes(pybpfmap):
    config = debian_config("bullseye")
    assert kconfig.check(kconfig.read(config)) == []
    assert json_out(pybpfmap("vm", "kconfig", "--check", str(config), "--json")) == []
    # Debian builds virtio, 9p and veth as modules: those serve
    values = kconfig.read(config)
    assert {values.get(n) for n in ("VIRTIO_BLK", "9P_FS", "VETH")} == {"m"}


def test_debian_6_1_config_passes(pybpfmap):
    if not DEBIAN_6_1.is_file():
        pytest.skip(f"{DEBIAN_6_1} not installed (linux-headers-6.1.0-57-amd64)")
    pybpfmap("vm", "kconfig", "--check", str(DEBIAN_6_1))
