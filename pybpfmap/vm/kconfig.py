"""What a kernel's configuration needs for each pybpfmap feature.

The test VM boots a kernel with ``-machine pc``: a 8250 serial console, the
root filesystem on virtio-blk (ext4), the relay on two virtio-serial ports
and the per-run control and project shares on virtio-9p
(:mod:`pybpfmap.vm.qemu`).  A kernel without those cannot run anything
there; a kernel without kprobes can run everything but ``stress``.
:data:`OPTIONS` says which option serves which :class:`Feature`,
:func:`fragment` writes them as a config fragment
(``scripts/kconfig/merge_config.sh`` takes it), :func:`check` names what a
given configuration lacks and what that breaks.

Every name was checked in the Kconfig files of 5.10, 6.12 and 7.3.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

from pybpfmap.errors import EnvironmentProblem


@dataclass(frozen=True)
class Feature:
    """What a group of options serves; ``boot``: nothing runs in the test VM without it."""

    name: str       # short, as the --check table shows it
    serves: str     # what breaks without it
    boot: bool = False


RELAY = Feature("relay", "the relay (virtio-serial ports over PCI): the VM cannot "
                "start a command or return its output", boot=True)
CONSOLE = Feature("console", "the guest's serial console (console.log, splats, "
                  "init's shell)", boot=True)
ROOT = Feature("root", "the root filesystem (ext4 on virtio-blk, the initramfs)", boot=True)
SHARE = Feature("share", "the control and project shares (virtio-9p): the guest "
                "powers off at once", boot=True)
USERSPACE = Feature("userspace", "Debian's userspace (proc, sysfs, devtmpfs, tmpfs, "
                    "sockets, ELF and #! programs)", boot=True)
POWEROFF = Feature("poweroff", "the guest's last-resort poweroff (sysrq o) when "
                   "poweroff -f fails: the runner kills qemu a grace period later")
BPF = Feature("bpf", "every BPF command (the bpf(2) syscall, the JIT, tracing programs)")
STRESS = Feature("stress", "stress (kprobe and tracepoint BPF programs on the "
                 "spin_unlock paths) and bcc-compare's kprobe tools")
LOCK_NAMES = Feature("lock names", "naming the lock a stuck CPU spins on (data "
                     "symbols in kallsyms)")
HANG = Feature("hang report", "catching a hung CPU (the soft-lockup watchdog's report)")
MEMORY = Feature("memory", "memory figures from the memory cgroup (maps, bench)")
SOFTIRQ = Feature("softirq", "the softirq workload (a veth pair between network "
                  "namespaces, tc programs)")
BTF = Feature("btf", "probing the era from the kernel's types (BTF of struct bpf_htab)")


@dataclass(frozen=True)
class Option:
    """One ``CONFIG_`` option and the feature that needs it."""

    name: str                   # without the CONFIG_ prefix
    feature: Feature
    # "m" serves too: Debian's initramfs loads virtio_pci, virtio_blk and ext4,
    # the guest's init modprobes virtio_console and 9p (pybpfmap/guest.py,
    # vm/image.py), and the kernel loads veth and the tc modules on first use.
    module_ok: bool = False

    @property
    def boot(self) -> bool:
        return self.feature.boot

    def satisfied_by(self, value: str | None) -> bool:
        return value == "y" or (self.module_ok and value == "m")


def _group(feature: Feature, *names: str, module_ok: bool = False) -> tuple[Option, ...]:
    return tuple(Option(n, feature, module_ok) for n in names)


OPTIONS: tuple[Option, ...] = (
    *_group(RELAY, "PCI"),
    *_group(RELAY, "VIRTIO_PCI", "VIRTIO_CONSOLE", module_ok=True),
    *_group(CONSOLE, "TTY", "SERIAL_8250", "SERIAL_8250_CONSOLE"),
    *_group(ROOT, "BLOCK", "BLK_DEV_INITRD"),
    *_group(ROOT, "VIRTIO_BLK", "EXT4_FS", module_ok=True),
    *_group(SHARE, "NET_9P", "NET_9P_VIRTIO", "9P_FS", module_ok=True),
    *_group(USERSPACE, "PROC_FS", "SYSFS", "DEVTMPFS", "TMPFS", "BINFMT_ELF",
            "BINFMT_SCRIPT", "NET", "UNIX"),
    *_group(POWEROFF, "MAGIC_SYSRQ"),
    *_group(BPF, "BPF", "BPF_SYSCALL", "BPF_JIT", "PERF_EVENTS", "FTRACE",
            "FUNCTION_TRACER", "DYNAMIC_FTRACE", "FTRACE_SYSCALLS"),
    *_group(STRESS, "KPROBES", "KPROBE_EVENTS", "BPF_EVENTS"),
    *_group(LOCK_NAMES, "KALLSYMS", "KALLSYMS_ALL"),
    *_group(HANG, "SOFTLOCKUP_DETECTOR"),
    *_group(MEMORY, "CGROUPS", "MEMCG"),
    *_group(SOFTIRQ, "INET", "NET_NS", "NET_CLS_ACT"),
    *_group(SOFTIRQ, "VETH", "NET_SCH_INGRESS", "NET_CLS_BPF", module_ok=True),
    *_group(BTF, "DEBUG_INFO", "DEBUG_INFO_BTF"),
)

# Options only the fragment sets: nothing of pybpfmap's needs them, but
# kconfig offers some of OPTIONS only with them (merge_config.sh warns about a
# value it could not set, and about a name the kernel does not know).
ENABLERS: tuple[tuple[str, str], ...] = (
    # Linux kernel commits 7582b7be16d0 ("kprobes: remove dependency on
    # CONFIG_MODULES") and 2c9e5d4a0082 ("bpf: remove CONFIG_BPF_JIT dependency
    # on CONFIG_MODULES of") (in v6.10): before them KPROBES and BPF_JIT need it.
    ("MODULES", "KPROBES and BPF_JIT depend on it before 6.10; every =m option"),
    ("DEBUG_KERNEL", "KALLSYMS_ALL, SOFTLOCKUP_DETECTOR and DEBUG_INFO depend on it"),
    # Linux kernel commit f9b3cd245784 ("Kconfig.debug: make DEBUG_INFO
    # selectable from a choice") (in v5.18): DEBUG_INFO has no prompt since.
    ("DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT", "selects DEBUG_INFO from 5.18 (unknown before)"),
    ("SHMEM", "TMPFS depends on it (off in tinyconfig)"),
    ("MULTIUSER", "NAMESPACES depends on it (off in tinyconfig)"),
    ("NAMESPACES", "NET_NS depends on it"),
    ("BLK_DEV", "the menu VIRTIO_BLK is in"),
    ("VIRTIO_MENU", "the menu VIRTIO_PCI is in"),
    ("NETDEVICES", "the menu VETH is in"),
    ("NET_CORE", "the menu VETH is in"),
    ("NET_SCHED", "the menu NET_SCH_INGRESS and NET_CLS_BPF are in"),
    ("NET_CLS", "the menu NET_CLS_BPF is in"),
    ("NETWORK_FILESYSTEMS", "the menu 9P_FS is in"),
    # The images install the configuration as /boot/config-R (Debian's
    # linux-image package ships it, own.py copies a tree's .config there);
    # libbpf reads it before /proc/config.gz, tests/helpers.py reads either.
    # So nothing breaks without these: they serve a kernel installed without it.
    ("IKCONFIG", "/proc/config.gz, where /boot/config-R is not installed"),
    ("IKCONFIG_PROC", "/proc/config.gz, where /boot/config-R is not installed"),
)


def fragment() -> str:
    """The options as a config fragment, grouped by the feature they serve."""
    lines = ["# pybpfmap test-VM kernel: `pybpfmap vm kconfig` (pybpfmap/vm/kconfig.py)"]
    feature = None
    for o in OPTIONS:
        if o.feature != feature:
            feature = o.feature
            lines.append(f"# {feature.name}: {feature.serves}")
        lines.append(f"CONFIG_{o.name}=y")
    lines.append("# what kconfig needs to offer the options above, and /proc/config.gz")
    lines += [f"CONFIG_{name}=y" for name, _ in ENABLERS]
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, str]:
    """``CONFIG_X=value`` lines of a .config (``# CONFIG_X is not set`` is absent)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            name, _, value = line.partition("=")
            out[name.removeprefix("CONFIG_")] = value.strip()
    return out


def read(path: Path) -> dict[str, str]:
    """The configuration at ``path``: a .config, /boot/config-R, or a gzipped
    one (/proc/config.gz)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise EnvironmentProblem(str(path), "cannot read the kernel configuration",
                                 e.errno) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise EnvironmentProblem(str(path), f"not a gzip file: {e}") from None
    config = parse(raw.decode(errors="replace"))
    if not config:
        raise EnvironmentProblem(str(path), "no CONFIG_ lines: not a kernel configuration")
    return config


@dataclass(frozen=True)
class Missing:
    """An option the configuration lacks, and its value there (None: not set)."""

    option: Option
    value: str | None

    @property
    def have(self) -> str:
        return "not set" if self.value is None else f"={self.value}"

    @property
    def need(self) -> str:
        return "y or m" if self.option.module_ok else "y"

    def render(self) -> str:
        return (f"CONFIG_{self.option.name} ({self.have}, needs {self.need}): "
                f"{self.option.feature.serves}")

    def to_json(self) -> dict:
        return {"option": f"CONFIG_{self.option.name}", "value": self.value,
                "needs": self.need, "feature": self.option.feature.name,
                "needed_by": self.option.feature.serves, "boot": self.option.boot}


def check(config: dict[str, str]) -> list[Missing]:
    """What ``config`` lacks, the boot options first, else in :data:`OPTIONS` order."""
    missing = [Missing(o, config.get(o.name)) for o in OPTIONS
               if not o.satisfied_by(config.get(o.name))]
    return sorted(missing, key=lambda m: not m.option.boot)


def require_boot(config: dict[str, str], where: str) -> list[Missing]:
    """Raise when the configuration cannot boot the relay; the other gaps otherwise."""
    missing = check(config)
    fatal = [m for m in missing if m.option.boot]
    if fatal:
        raise EnvironmentProblem(where, "this kernel cannot run in the test VM: " + ", ".join(
            f"CONFIG_{m.option.name}{' not set' if m.value is None else '=' + m.value} "
            f"({m.option.feature.name})" for m in fatal)
            + " (`pybpfmap vm kconfig --check` says what each serves)")
    return missing
