"""Kernel headers for BCC.

BCC compiles BPF C against ``/lib/modules/$(uname -r)/build``.  Cloud and CI
kernels often ship no headers (this project's own CI host runs 6.18 with none),
so when they are missing pybpfmap links Debian's nearest ``linux-headers-*``
package in their place and says so.  For map and tracepoint programs the
mismatch does not matter (they use only UAPI types and stable helpers); a
kprobe program that reads kernel structs would need the real headers, which is
why :func:`headers_in_use` reports the mismatch instead of hiding it.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import asdict, dataclass

from pybpfmap.errors import EnvironmentProblem


@dataclass(frozen=True)
class Headers:
    """Which headers BCC compiles against."""

    build: str          # /lib/modules/<release>/build
    target: str         # where it points
    matches_kernel: bool
    linked_by_pybpfmap: bool
    note: str

    def as_dict(self) -> dict:
        return asdict(self)


def _release() -> str:
    return os.uname().release


def _version_key(path: str) -> tuple[int, ...]:
    m = re.search(r"linux-headers-(\d+)\.(\d+)\.(\d+)-(\d+)", path)
    return tuple(int(x) for x in m.groups()) if m else (0,)


def debian_headers() -> list[str]:
    """Installed Debian arch header dirs (``/usr/src/linux-headers-X-amd64``), newest last."""
    dirs = [d for d in glob.glob("/usr/src/linux-headers-*")
            if not d.endswith(("-common", "-common-rt")) and os.path.isdir(d)
            and os.path.exists(os.path.join(d, "Makefile"))]
    return sorted(dirs, key=_version_key)


def _nearest(candidates: list[str], release: str) -> str:
    """The candidate whose version is closest to the running kernel's."""
    m = re.match(r"(\d+)\.(\d+)", release)
    want = (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    def distance(path: str) -> tuple[int, tuple[int, ...]]:
        v = _version_key(path)
        return (abs((v[0] * 1000 + v[1]) - (want[0] * 1000 + want[1])),
                tuple(-x for x in v))

    return min(candidates, key=distance)


def _common_dir(arch_dir: str) -> str | None:
    """linux-headers-6.1.0-56-amd64 -> linux-headers-6.1.0-56-common."""
    common = re.sub(r"(linux-headers-\d+\.\d+\.\d+-\d+)-.*$", r"\1-common", arch_dir)
    if os.path.isdir(common):
        return common
    return None


def headers_in_use() -> Headers | None:
    """What ``/lib/modules/$(uname -r)/build`` holds, or None if nothing."""
    release = _release()
    build = f"/lib/modules/{release}/build"
    if not os.path.exists(build):
        return None
    target = os.path.realpath(build)
    matches = release in os.path.basename(target) or not target.startswith("/usr/src/")
    marker = os.path.join(f"/lib/modules/{release}", ".pybpfmap-linked")
    linked = os.path.exists(marker)
    if matches:
        note = f"headers for the running kernel {release}"
    else:
        note = (f"no headers exist for the running kernel {release}; using Debian's "
                f"{os.path.basename(target)} (mismatch: fine for map and tracepoint "
                f"programs, which use only UAPI types)")
    return Headers(build, target, matches, linked, note)


def ensure_headers(log=sys.stderr) -> Headers:
    """Make sure BCC finds headers; link Debian's nearest ones in if needed."""
    found = headers_in_use()
    if found is not None:
        return found
    release = _release()
    candidates = debian_headers()
    if not candidates:
        raise EnvironmentProblem(
            "kernel headers",
            f"/lib/modules/{release}/build is missing and no Debian linux-headers package "
            f"is installed; run `sudo vagrant/provision.sh --host` (installs "
            f"linux-headers-amd64) and retry")
    arch_dir = _nearest(candidates, release)
    moddir = f"/lib/modules/{release}"
    try:
        os.makedirs(moddir, exist_ok=True)
        os.symlink(arch_dir, os.path.join(moddir, "build"))
        common = _common_dir(arch_dir)
        if common and not os.path.lexists(os.path.join(moddir, "source")):
            os.symlink(common, os.path.join(moddir, "source"))
        with open(os.path.join(moddir, ".pybpfmap-linked"), "w") as f:
            f.write(f"{arch_dir}\n")
    except PermissionError as e:
        raise EnvironmentProblem("kernel headers", f"cannot link headers into {moddir}: "
                                 "run as root", e.errno) from e
    print(f"pybpfmap: no kernel headers for {release}; linked Debian's "
          f"{os.path.basename(arch_dir)} as {moddir}/build", file=log)
    found = headers_in_use()
    assert found is not None
    return found
