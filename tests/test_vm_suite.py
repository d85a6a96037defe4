"""`pybpfmap vm test`'s judgement of a guest run, and the junit reader it shares
with the Vagrant check (no VM: real junit files written by a real pytest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pybpfmap import junit
from pybpfmap.errors import EnvironmentProblem
from pybpfmap.guest import Accel
from pybpfmap.vm.outcome import Outcome, VmResult
from pybpfmap.vm.suite import SuiteRun, judge, junit_problem

CASES = """
import pytest

def test_ok():
    pass

def test_ok_too():
    pass

@pytest.mark.skip(reason="no kprobes here: CONFIG_KPROBES is off")
def test_needs_kprobes():
    pass

@pytest.mark.skip(reason="an unrelated reason")
def test_skipped():
    pass
"""


def _pytest_junit(tmp_path: Path, body: str) -> Path:
    """Run a real pytest on ``body``; the junit file it wrote."""
    (tmp_path / "test_sample.py").write_text(body)
    xml = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={xml}", "test_sample.py"], cwd=tmp_path,
                   capture_output=True, timeout=120)
    return xml


def _vm(tmp_path: Path, outcome: Outcome, exit_code: int | None = 0) -> VmResult:
    return VmResult(outcome=outcome, message="m", exit_code=exit_code, accel=Accel.TCG,
                    kernel="bookworm", kernel_release="6.1.0-0-amd64", results_dir=tmp_path)


def test_counts_and_skip_reasons_from_a_real_pytest(tmp_path):
    j = junit.read(_pytest_junit(tmp_path, CASES))
    assert (j.tests, j.passed, j.skipped, j.failures, j.errors) == (4, 2, 2, 0, 0)
    assert j.ok and j.counts() == "2 passed, 2 skipped"
    assert [c.name.rsplit("::", 1)[-1] for c in j.skipped_because("no kprobes here")] == [
        "test_needs_kprobes"]


def test_a_failed_test_fails_the_kernel(tmp_path):
    xml = _pytest_junit(tmp_path, "def test_bad():\n    assert 1 == 2\n\n"
                                  "def test_good():\n    pass\n")
    j = junit.read(xml)
    assert (j.failures, j.passed, j.ok) == (1, 1, False)
    run = SuiteRun("bookworm", _vm(tmp_path, Outcome.FAILED, 1), j,
                   judge(_vm(tmp_path, Outcome.FAILED, 1), j))
    assert not run.ok and run.status == 1
    assert "test_bad" in run.problem and "FAILED" in run.line()


def test_forbidden_skips_and_no_test_run_fail(tmp_path):
    j = junit.read(_pytest_junit(tmp_path, CASES))
    problem = judge(_vm(tmp_path, Outcome.PASSED), j)
    assert problem and "lack of what the guest has" in problem
    only_skips = junit.parse('<testsuite tests="1" skipped="1"><testcase name="t">'
                             '<skipped message="x"/></testcase></testsuite>')
    assert judge(_vm(tmp_path, Outcome.PASSED), only_skips) == "no test ran"


def test_a_nonzero_pytest_status_fails_even_with_clean_junit(tmp_path):
    """The Vagrant check's guest pytest and vm test's share these rules."""
    j = junit.parse('<testsuite tests="1"><testcase classname="a" name="t"/></testsuite>')
    assert junit_problem(j, 0) is None
    assert junit_problem(j, 5) == "pytest exited with status 5"
    assert judge(_vm(tmp_path, Outcome.FAILED, 4), j) == "pytest exited with status 4"


def test_a_guest_that_hung_is_said_with_its_outcome(tmp_path):
    vm = _vm(tmp_path, Outcome.HUNG, None)
    run = SuiteRun("bullseye", vm, None, judge(vm, None))
    assert run.status == 123 and run.problem.startswith("the guest hung")
    assert "no junit results" in run.line()


def test_a_clean_run_passes(tmp_path):
    j = junit.parse('<testsuites><testsuite tests="3" skipped="1" time="2.5">'
                    '<testcase classname="a" name="t1"/><testcase classname="a" name="t2"/>'
                    '<testcase classname="a" name="t3"><skipped message="why"/></testcase>'
                    '</testsuite></testsuites>')
    vm = _vm(tmp_path, Outcome.PASSED)
    run = SuiteRun("bookworm", vm, j, judge(vm, j))
    assert run.ok and run.status == 0
    assert run.line() == "bookworm (6.1.0-0-amd64): 2 passed, 1 skipped in 0 s"
    assert run.to_json()["junit"]["passed"] == 2


@pytest.mark.parametrize("text", ["", "<html/>x", "not xml"])
def test_bad_junit_is_one_clear_error(tmp_path, text):
    path = tmp_path / "junit.xml"
    path.write_text(text)
    with pytest.raises(EnvironmentProblem) as e:
        junit.read(path)
    assert str(path) in str(e.value)


def test_the_era_warn_for_no_prealloc_tracing_programs_is_expected_where_the_era_has_it(
        tmp_path, monkeypatch):
    """The guest tests load tracing programs with NO_PREALLOC maps: 5.10's
    WARN_ONCE is excused once per boot, on 5.10 only, and not on PREEMPT_RT
    (which refuses those programs instead)."""
    from pybpfmap.splats import find_splats
    from pybpfmap.vm import catalog, suite

    allowed = {}

    def fake_run_in_vm(cmd, *, kernel, allow_splats, **kw):
        allowed[kernel.name] = allow_splats
        return _vm(tmp_path, Outcome.PASSED)

    monkeypatch.setattr(suite, "run_in_vm", fake_run_in_vm)
    for name in ("bullseye", "bullseye-rt", "bookworm", "trixie-backports"):
        suite.run_suite(catalog.get(name), tmp_path)
    warn = ("[  115.544672] trace type BPF program uses run-time allocation\n"
            "[  115.547099] WARNING: CPU: 1 PID: 322 at kernel/bpf/verifier.c:10519 "
            "bpf_check+0x2f8e/0x3470\n")
    assert find_splats(warn, allowed["bullseye"]) == []
    assert len(find_splats(warn + warn, allowed["bullseye"])) == 1  # once per boot
    for name in ("bullseye-rt", "bookworm", "trixie-backports"):
        assert allowed[name] == () and len(find_splats(warn, allowed[name])) == 1
