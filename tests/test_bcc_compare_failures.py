"""A tool's failure is typed once, from what BCC printed, and bcc-compare
dispatches on the type: the kernel's or BCC's answer is a skip with the
reason, anything else a failed run."""

from __future__ import annotations

import errno

import pytest

from pybpfmap import era
from pybpfmap.bcc_compare import compare, failures, tools
from pybpfmap.bcc_compare.capture import error_summary
from pybpfmap.bcc_compare.failures import (
    BccCannotAttach,
    BccNotCompilable,
    BccRefused,
    NoPreallocRefused,
    ToolFailed,
    tool_failure,
)
from pybpfmap.bcc_compare.result import FAILED, SKIPPED
from pybpfmap.errors import PybpfmapError

TRACEBACK = """
Traceback (most recent call last):
  File "/usr/sbin/runqlat-bpfcc", line 250, in <module>
    b = BPF(text=bpf_text)
"""
# BCC's source, quoted by the traceback of a refused load: not the refusal itself.
LOAD_FUNC = """  File "/usr/lib/python3/dist-packages/bcc/__init__.py", line 526, in load_func
    raise Exception("Failed to load BPF program %s: %s" %
"""

# What BCC 0.26 prints, as seen: the verifier refusing a program...
REFUSED = ("bpf: Failed to load program: Permission denied\n"
           "0: R1=ctx() R10=fp0\n"
           "; return *(volatile u32 *)((char *)skb + 4000); @ main.c:4\n"
           "0: (61) r0 = *(u32 *)(r1 +4000)\n"
           "invalid bpf_context access off=4000 size=4\n"
           "processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0\n"
           + TRACEBACK + LOAD_FUNC
           + "Exception: Failed to load BPF program b'f': Permission denied\n")
# ... a PREEMPT_RT kernel refusing the rewritten map in a tracing program ...
RT = ("bpf: Failed to load program: Invalid argument\n"
      f"{era.RT_REFUSAL}\nprocessed 0 insns (limit 1000000)\n" + TRACEBACK + LOAD_FUNC
      + "Exception: Failed to load BPF program b'raw_tracepoint__sched_wakeup': "
        "Invalid argument\n")
# ... clang failing on this kernel's headers ...
NOT_COMPILABLE = ("/virtual/main.c:3:27: error: use of undeclared identifier 'undeclared'\n"
                  "1 error generated.\n" + TRACEBACK
                  + "Exception: Failed to compile BPF module <text>\n")
# ... and an attach point that is not there.
NOT_TRACEABLE = (TRACEBACK + "Exception: Failed to attach BPF program b'trace_req_done' to "
                 "kprobe b'blk_account_io_done', it's not traceable (either non-existing, "
                 "inlined, or marked as \"notrace\")\n")


def _failure(stderr: str) -> ToolFailed:
    label = "x (noprealloc)"
    return tool_failure(label, f"{label} exited with status 1 before tracing: "
                               f"{error_summary(stderr)}", stderr)


def test_refusal_carries_errno_and_verifier_words() -> None:
    e = _failure(REFUSED)
    assert type(e) is BccRefused and isinstance(e, PybpfmapError)
    assert e.err == errno.EACCES
    assert e.verifier == "invalid bpf_context access off=4000 size=4"
    assert e.param == "x (noprealloc)" and e.stderr == REFUSED


def test_rt_refusal_is_its_own_kind() -> None:
    e = _failure(RT)
    assert type(e) is NoPreallocRefused and isinstance(e, BccRefused)
    assert (e.err, e.verifier) == (errno.EINVAL, era.RT_REFUSAL)


def test_compile_failure_carries_clangs_first_error() -> None:
    e = _failure(NOT_COMPILABLE)
    assert type(e) is BccNotCompilable
    assert e.clang_error == ("/virtual/main.c:3:27: error: use of undeclared identifier "
                             "'undeclared'")


def test_untraceable_target_is_named() -> None:
    e = _failure(NOT_TRACEABLE)
    assert type(e) is BccCannotAttach and e.target == "blk_account_io_done"
    # BCC's words may come in a reply to a command too (a re-attach on resume)
    said = NOT_TRACEABLE.strip().splitlines()[-1]
    reply = tool_failure("x (shipped)", f"x (shipped): resume failed: {said}")
    assert type(reply) is BccCannotAttach


def test_anything_else_is_a_plain_failure_with_the_same_message() -> None:
    stderr = TRACEBACK + LOAD_FUNC + "Exception: boom\n"
    e = _failure(stderr)
    assert type(e) is ToolFailed
    assert str(e) == e.message() == ("x (noprealloc) exited with status 1 before tracing: "
                                      "Exception: boom")
    assert e.exit_code == 1


@pytest.mark.root
@pytest.mark.parametrize("stderr, status, says", [
    (RT, SKIPPED, "the kernel refuses BPF_F_NO_PREALLOC"),
    (NOT_COMPILABLE, SKIPPED, "cannot compile syscount against this kernel's headers"),
    (NOT_TRACEABLE, SKIPPED, "cannot attach on this kernel"),
    (REFUSED, FAILED, "failed: x (noprealloc) exited"),
    (TRACEBACK + "Exception: boom\n", FAILED, "failed: x (noprealloc) exited"),
])
def test_compare_dispatches_on_the_type(monkeypatch, stderr, status, says) -> None:
    """A kernel's refusal of the rewritten maps, a compile failure or an
    untraceable attach point is a skip with the reason; anything else
    (another refusal included) is a failed run."""
    error = _failure(stderr)

    def fail(*a, **kw):
        raise error

    monkeypatch.setattr(compare, "measure_tool", fail)
    monkeypatch.setattr(compare, "start_deadline", lambda: 30.0)
    [rec] = compare.compare_here([tools.TOOLS["syscount"]], 0.3, 2, log=None)
    assert rec.status == status
    assert says in rec.verdict
    if isinstance(error, BccNotCompilable):
        assert rec.verdict.endswith(error.clang_error)
    else:
        assert str(error) in rec.verdict


def test_not_comparable_says_why() -> None:
    e = failures.NotComparable(tools.TOOLS["opensnoop"], {"kinds": ["kfunc"]})
    assert str(e).startswith("no hash map to rewrite: the BPF text opensnoop builds here "
                             "(kfunc) declares no BPF_HASH")
