"""Every option is validated before anything starts: a bad number is an
argparse usage error when the command line is parsed, an output path that
cannot be written is one line naming the option and the errno before the
command runs, and no option may be abbreviated.

None of this needs root, BCC or the test VM.  Every command line below would
go to the test VM if a check were missing, and the VM image cache points
where nothing can be made (``PYBPFMAP_VM_CACHE``): a regression fails the
test instead of building an image or booting a guest.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pybpfmap.cli import build_parser
from pybpfmap.commands import args as cli_args
from pybpfmap.errors import UsageError, errno_name

REPO = Path(__file__).resolve().parent.parent
NO_VM_CACHE = "/proc/nonexistent/pybpfmap-vm-cache"  # nothing can be built or booted

# Each command, with arguments that send its work to the test VM.
COMMAND = {
    "info": ["info", "--kernel", "bookworm"],
    "maps": ["maps", "--kernel", "bookworm"],
    "advise": ["advise", "--kernel", "bookworm"],
    "bench": ["bench", "--kernel", "bookworm"],
    "stress": ["stress", "--kernel", "bookworm"],
    "bcc-compare": ["bcc-compare", "--tools", "biolatency", "--kernel", "bookworm"],
    "report": ["report", "--merge", "/nonexistent/pybpfmap-report"],
    "vm run": ["vm", "run", "--kernel", "bookworm"],
    "vm test": ["vm", "test", "--kernel", "bookworm"],
    "vm box": ["vm", "box", "--kernel", "bookworm"],
    "vm box-check": ["vm", "box-check", "--netns", "none", "--domain", "none", "--work",
                     "/nonexistent"],
}


def run_cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python3 -m pybpfmap ARGV`` from this checkout, with no usable VM cache."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYBPFMAP_VM_CACHE=NO_VM_CACHE)
    return subprocess.run([sys.executable, "-m", "pybpfmap", *argv], capture_output=True,
                          text=True, timeout=60, env=env, cwd=cwd or REPO)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line on stderr (asserting there is exactly one and no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# (command, option, bad values): every numeric option of every command.
BAD_NUMBERS = [
    ("maps", "--max-entries", ["-1", "4294967296", "abc"]),
    ("maps", "--key-size", ["-1", "abc"]),
    ("maps", "--value-size", ["-1", "1.5"]),
    ("maps", "--map-flags", ["-1", "0x100000000", "abc"]),
    ("maps", "--updates", ["0", "-1", "abc"]),
    ("maps", "--cpus", ["0", "abc"]),
    ("advise", "--max-entries", ["-1", "4294967296", "abc"]),
    ("advise", "--key-size", ["-1", "abc"]),
    ("advise", "--value-size", ["-1", "1.5"]),
    ("advise", "--stress-seconds", ["0", "-1", "abc"]),
    ("bench", "--cpus", ["0", "-1", "abc"]),
    ("bench", "--max-entries", ["0", "-5", "1e3"]),
    ("bench", "--fill", ["-1", "101", "abc"]),
    ("bench", "--runs", ["0", "-1", "abc"]),
    ("bench", "--seconds", ["0", "-0.5", "abc", "nan", "inf"]),
    ("bench", "--warmup", ["-1", "abc"]),
    ("bench", "--triples", ["0", "-1", "abc"]),
    ("stress", "--duration", ["0", "-1", "abc"]),
    ("stress", "--heartbeat-limit", ["0", "-1", "abc"]),
    ("stress", "--baseline", ["-1", "abc"]),
    ("stress", "--nmi-rate", ["0", "-5", "abc"]),
    ("bcc-compare", "--duration", ["0", "-1", "abc"]),
    ("bcc-compare", "--runs", ["1", "0", "-1", "abc"]),
    ("vm run", "--cpus", ["0", "-1", "abc"]),
    ("vm run", "--memory", ["0", "-1G", "0G", "lots"]),
    ("vm run", "--timeout", ["0", "-1", "abc"]),
    ("vm run", "--hang-timeout", ["0", "-1", "abc"]),
    ("vm run", "--boot-timeout", ["0", "-1", "abc"]),
    ("vm test", "--timeout", ["0", "-1", "abc"]),
    ("vm test", "--hang-timeout", ["0", "-1", "abc"]),
    ("vm box-check", "--boots", ["0", "-1", "abc"]),
    ("vm box-check", "--limit", ["0", "-1", "abc"]),
]
BAD_NUMBER_CASES = [(c, o, v) for c, o, values in BAD_NUMBERS for v in values]


@pytest.mark.parametrize("command,option,value", BAD_NUMBER_CASES,
                         ids=[f"{c} {o}={v}" for c, o, v in BAD_NUMBER_CASES])
def test_bad_number_is_a_usage_error(command, option, value):
    result = run_cli(*COMMAND[command], f"{option}={value}")
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert f"argument {option}:" in line and repr(value) in line, line


@pytest.mark.parametrize("argv,option", [
    (["bench", "--kernel", "bookworm", "--seconds", "-1"], "--seconds"),
    (["stress", "--kernel", "bookworm", "--duration", "-2.5"], "--duration"),
    (["vm", "run", "--kernel", "bookworm", "--timeout", "-1"], "--timeout"),
    (["bench", "--kernel", "bookworm", "--cpus", "1", "-2"], "--cpus"),
])
def test_negative_value_after_a_space(argv, option):
    """``--opt -1`` is the value -1, refused, not a missing value or an unknown option."""
    result = run_cli(*argv)
    assert result.returncode == 2, result.stderr
    assert f"argument {option}:" in error_line(result)


def numeric_options() -> set[tuple[str, str]]:
    """(command, option) for every option of every command that takes a number."""
    from pybpfmap.commands import bench, maps

    numeric = {int, float, cli_args.positive_int, cli_args.u32, cli_args.positive_float,
               cli_args.non_negative_float, cli_args.memory_size, maps.bits, bench.percent}
    found = set()
    for name, parser in parsers():
        for action in parser._actions:
            kind = action.type or getattr(action, "convert", None)  # ListArg converts items
            if kind in numeric or getattr(kind, "__name__", "").startswith("int_at_least"):
                found.add((name, action.option_strings[0]))
    return found


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)command's parser, by its command line (``vm run``), the top one as ''."""
    out = []

    def walk(name: str, parser: argparse.ArgumentParser) -> None:
        out.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(f"{name} {sub_name}".strip(), sub)

    walk("", build_parser())
    return out


def test_every_numeric_option_is_covered_above():
    """A numeric option added later gets a checking type and a row in BAD_NUMBERS."""
    assert numeric_options() == {(c, o) for c, o, _ in BAD_NUMBERS}


def test_no_option_takes_an_unchecked_number():
    for name, parser in parsers():
        for action in parser._actions:
            assert action.type not in (int, float), (name, action.option_strings)


@pytest.mark.parametrize("argv", [
    ["maps", "--max-entries", "0"],        # 0 is for the kernel to refuse (EINVAL)
    ["maps", "--map-flags", "0x2"],
    ["bench", "--fill", "0,50%,100", "--warmup", "0", "--seconds", "0.01"],
    ["stress", "--baseline", "0"],         # 0: no baseline window
    ["vm", "test", "--timeout", "0.5", "--hang-timeout", "30"],
    ["vm", "run", "--memory", "1.5G", "--cpus", "1"],
    ["bcc-compare", "--runs", "2", "--duration", "0.5"],
])
def test_good_values_parse(argv):
    build_parser().parse_args(argv)


def test_numbers_are_converted():
    ns = build_parser().parse_args(["bench", "--fill", "50%", "--cpus", "1_0", "--seconds",
                                    "1e-1"])
    assert ns.fills == [50] and ns.cpus == [10] and ns.seconds == pytest.approx(0.1)
    assert build_parser().parse_args(["maps", "--map-flags", "0b10"]).map_flags == 2


# (command, option, folder or file)
OUTPUTS = [
    ("info", "--results", "dir"),
    ("maps", "--results", "dir"),
    ("advise", "--results", "dir"),
    ("bench", "--results", "dir"),
    ("bench", "--plot", "file"),
    ("stress", "--results", "dir"),
    ("bcc-compare", "--results", "dir"),
    ("report", "--out", "dir"),
    ("vm run", "--results", "dir"),
    ("vm test", "--results", "dir"),
    ("vm box", "--output", "file"),
]
# (id, path under tmp_path or absolute, errno names it may give, per kind)
BAD_PATHS = [
    ("under-a-file", "afile/sub/x", {"dir": {"ENOTDIR"}, "file": {"ENOTDIR"}}),
    ("is-the-wrong-kind", None, {"dir": {"ENOTDIR"}, "file": {"EISDIR"}}),
    ("in-proc", "/proc/nonexistent/x", {"dir": {"ENOENT"}, "file": {"ENOENT"}}),
    ("in-sys", "/sys/pybpfmap-test-x", {"dir": {"EPERM", "EACCES", "EROFS"},
                                        "file": {"EPERM", "EACCES", "EROFS"}}),
]


def test_every_output_option_is_covered_above():
    found = {(name, action.option_strings[0]) for name, parser in parsers()
             for action in parser._actions if isinstance(action, cli_args.Output)}
    assert found == {(c, o) for c, o, _ in OUTPUTS}
    kinds = {(name, action.option_strings[0]): isinstance(action, cli_args.OutputDir)
             for name, parser in parsers() for action in parser._actions
             if isinstance(action, cli_args.Output)}
    assert kinds == {(c, o): k == "dir" for c, o, k in OUTPUTS}


@pytest.mark.parametrize("command,option,kind", OUTPUTS, ids=[f"{c} {o}" for c, o, _ in OUTPUTS])
@pytest.mark.parametrize("case,path,errnos", BAD_PATHS, ids=[b[0] for b in BAD_PATHS])
def test_unwritable_output_fails_first_and_creates_nothing(tmp_path, command, option, kind,
                                                           case, path, errnos):
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "adir").mkdir()
    if path is None:
        path = "afile" if kind == "dir" else "adir"
    target = tmp_path / path  # an absolute path stays as it is
    before = tree(tmp_path)
    result = run_cli(*COMMAND[command], option, str(target), cwd=tmp_path)
    assert result.returncode != 0, result.stderr
    line = error_line(result)
    assert option in line and str(target) in line, line
    assert any(f" {name} (" in line for name in errnos[kind]), line
    assert tree(tmp_path) == before
    assert (tmp_path / "afile").read_text() == "not a folder\n"
    if case in ("in-proc", "in-sys"):
        assert not target.exists()


def test_writable_output_is_tried_and_removed_before_a_later_error(tmp_path):
    """A good --results passes the check, which leaves nothing behind: the
    command's own usage error (an unknown map kind) comes next."""
    result = run_cli("stress", "--kernel", "bookworm", "--types", "nosuch", "--results",
                     str(tmp_path / "new" / "a" / "b"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "--types" in error_line(result)
    assert tree(tmp_path) == set()


def test_default_report_out_is_checked(tmp_path):
    """report's default --out (results/report, relative) is checked too."""
    (tmp_path / "results").write_text("")
    result = run_cli("report", "--merge", str(tmp_path / "none"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert "--out" in line and "ENOTDIR" in line, line
    assert tree(tmp_path) == {"results"}


def test_report_merge_usage_error_makes_no_out_folder(tmp_path):
    result = run_cli("report", "--merge", "elsewhere", "--quick", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "--merge" in error_line(result)
    assert tree(tmp_path) == set()


def test_writable_dir_makes_nothing_that_stays(tmp_path):
    cli_args.writable_dir("--out", tmp_path / "a" / "b" / "c")
    assert tree(tmp_path) == set()
    (tmp_path / "kept").mkdir()
    cli_args.writable_dir("--out", tmp_path / "kept")
    assert tree(tmp_path) == {"kept"}


def test_writable_file_keeps_an_existing_file_and_removes_a_new_one(tmp_path):
    existing = tmp_path / "plot.png"
    existing.write_text("old plot")
    cli_args.writable_file("--plot", existing)
    assert existing.read_text() == "old plot"
    cli_args.writable_file("--plot", tmp_path / "new.png")
    assert tree(tmp_path) == {"plot.png"}


@pytest.mark.parametrize("check", [cli_args.writable_dir, cli_args.writable_file])
def test_unwritable_path_error_names_option_and_errno(tmp_path, check):
    (tmp_path / "afile").write_text("")
    with pytest.raises(UsageError) as info:
        check("--results", tmp_path / "afile" / "x")
    e = info.value
    assert e.exit_code == 2 and e.param == "--results" and errno_name(e.err) == "ENOTDIR"
    assert e.message().startswith("--results: ENOTDIR (20, Not a directory): ")
    assert tree(tmp_path) == {"afile"}


@pytest.mark.parametrize("argv,word", [
    (["bench", "--kern", "bookworm"], "--kern"),
    (["maps", "--max-ent", "5", "--kernel", "bookworm"], "--max-ent"),
    (["stress", "--kernel", "bookworm", "--dur", "1"], "--dur"),
    (["vm", "run", "--kernel", "bookworm", "--time", "5"], "--time"),
    (["report", "--merge", "/nonexistent/pybpfmap-report", "--ou", "x"], "--ou"),
])
def test_abbreviated_option_is_refused(argv, word, tmp_path):
    result = run_cli(*argv, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert word in error_line(result)
    assert tree(tmp_path) == set()


def test_no_parser_allows_abbreviations():
    for name, parser in parsers():
        assert parser.allow_abbrev is False, name or "pybpfmap"
