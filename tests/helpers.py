"""What test modules share that is not a fixture."""

from __future__ import annotations

import pytest


def image(name: str):
    """The cached image of catalog kernel ``name`` (for VM tests), or skip saying
    why there is none."""
    from pybpfmap.vm import find_image

    found = find_image(name)
    if found is None:
        pytest.skip(f"no {name} image built for the current inputs: run `pybpfmap vm build "
                    f"--kernel {name}` (CI builds bookworm, bullseye and trixie-backports)")
    return found
