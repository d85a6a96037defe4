"""The kprobe-marked tests of this suite, run inside the test VM.

This host may have no kprobes (CONFIG_KPROBES=n, as on this project's CI
host); the `kprobes` tests then skip here and this test runs them in a guest,
so that one `pytest` on the host covers them.  The guest is the newest era's
(trixie-backports, 7.x: resilient bucket locks): the Vagrant check in CI runs
the same tests in a bookworm (6.1) box.  It fails if the guest run fails,
hangs, panics or splats, or if every kprobe test was skipped there.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tests.helpers import image

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.root]
KERNEL = "trixie-backports"


def test_kprobe_tests_pass_in_the_vm(tmp_path):
    from pybpfmap.vm import Outcome, run_in_vm

    image(KERNEL)
    result = run_in_vm(["python3", "-m", "pytest", "-m", "kprobes", "-ra", "tests"],
                       kernel=KERNEL, results_dir=tmp_path, timeout=1500, hang_timeout=120,
                       build=False)
    junit = tmp_path / "junit.xml"
    counts: dict[str, int] = {}
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "skipped", "failures", "errors")}
    assert result.outcome is Outcome.PASSED, (f"{result.summary()} {counts} "
                                              f"{result.evidence_text()}")
    assert junit.exists(), "pytest in the guest wrote no junit.xml"
    assert counts["tests"] > 0 and counts["failures"] == counts["errors"] == 0
    assert counts["tests"] > counts["skipped"], f"every kprobe test skipped in the VM: {counts}"
