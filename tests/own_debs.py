"""A kernel brought as a directory of .deb files, for the tests of ``--kernel
PATH`` (and for ``.ci/run``, which builds its image beside the Vagrant check):
Debian's newest bookworm 6.1 kernel ABI that has headers and is not the one
the catalog's bookworm image installs, fetched with ``apt-get download``.

    python3 -m tests.own_debs DIR   # prints DIR once the four .deb files are in it
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PATTERN = re.compile(r"linux-image-(6\.1\.0-(\d+)-amd64)")


def _apt(*argv: str, cwd: Path | None = None) -> str:
    return subprocess.run(["apt-cache" if argv[0] != "download" else "apt-get", *argv],
                          capture_output=True, text=True, check=True, cwd=cwd,
                          stdin=subprocess.DEVNULL).stdout


def choose(avoid: str | None) -> str | None:
    """The newest 6.1.0-N-amd64 release apt offers with headers, other than ``avoid``."""
    releases = sorted({m.group(1) for m in map(PATTERN.fullmatch, _apt(
        "pkgnames", "linux-image-6.1.0-").split()) if m},
        key=lambda r: int(PATTERN.fullmatch(f"linux-image-{r}").group(2)), reverse=True)
    for release in releases:
        if release != avoid and re.search(r"Candidate: (?!\(none\))",
                                          _apt("policy", f"linux-headers-{release}")):
            return release
    return None


def download(dest: Path, avoid: str | None) -> Path | None:
    """``dest`` holding linux-image/-headers of :func:`choose`'s release, its
    -common headers and linux-kbuild-6.1 (downloaded once); None when apt offers none."""
    release = choose(avoid)
    if release is None:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    packages = [f"linux-image-{release}", f"linux-headers-{release}",
                f"linux-headers-{release.removesuffix('-amd64')}-common", "linux-kbuild-6.1"]
    have = {p.name.split("_")[0] for p in dest.glob("*.deb")}
    if set(packages) != have:
        for old in dest.glob("*.deb"):
            old.unlink()
        dest.chmod(0o755)  # apt's _apt user writes there first
        _apt("download", *packages, cwd=dest)
    return dest


def catalog_release() -> str | None:
    """The release the catalog's bookworm image installs (None: not built)."""
    from pybpfmap.vm import catalog
    from pybpfmap.vm.image import find_image

    image = find_image(catalog.get("bookworm"))
    return image.release if image else None


if __name__ == "__main__":
    found = download(Path(sys.argv[1]), catalog_release())
    if found is None:
        sys.exit("no bookworm 6.1 kernel with headers other than the catalog's in apt")
    print(found)
