"""The kprobe-marked tests of this suite, run inside the test VM.

This host may have no kprobes (CONFIG_KPROBES=n, as on this project's CI
host); the `kprobes` tests then skip here and this test runs them in the
guest, so that one `pytest` on the host covers them.  It fails if the guest
run fails, hangs, panics or splats, or if every kprobe test was skipped there.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def test_kprobe_tests_pass_in_the_vm(tmp_path):
    from pybpfmap.vm import find_image, run_in_vm

    if find_image("bookworm") is None:
        pytest.skip("no bookworm image built for the current inputs: run `pybpfmap vm build`")
    result = run_in_vm(["python3", "-m", "pytest", "-m", "kprobes", "-ra", "tests"],
                       kernel="bookworm", results_dir=tmp_path, stream=False,
                       timeout=1500, hang_timeout=120)
    junit = tmp_path / "junit.xml"
    summary = ""
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "skipped", "failures", "errors")}
        summary = f"{counts}"
    assert result.outcome == "passed", (f"{result.outcome} (exit {result.exit_code}) "
                                        f"{summary} {result.evidence or ''}")
    assert junit.exists(), "pytest in the guest wrote no junit.xml"
    assert counts["tests"] > 0 and counts["failures"] == counts["errors"] == 0
    assert counts["tests"] > counts["skipped"], f"every kprobe test skipped in the VM: {counts}"
