"""Command-line conventions shared by every command.

* Lists: ``--types a,b``, ``--types a b`` and ``--types a --types b`` all mean
  ``[a, b]`` (:class:`ListArg`); an unknown item is a usage error naming the
  option and the choices.
* ``--kernel K``: a test-VM kernel from the catalog (:mod:`pybpfmap.vm.catalog`),
  a list of them (a :class:`ListArg`), or ``all`` — one definition (:func:`add_kernel`), parsed
  into :class:`CatalogKernel` records; ``--results DIR`` says where the VM's
  console, dmesg and results go.  Both are host-only (:func:`host_only`): the
  command line relayed to the test VM is the typed one without them
  (:func:`guest_argv`, computed from the parser).
* ``--json``: the command's records as one JSON list on stdout, nothing else,
  whatever ``--kernel`` is (:func:`emit`).
* Numbers are checked when the command line is parsed (:func:`positive_int`,
  :func:`positive_float`...): a bad one is a usage error naming the option
  before anything starts.
* Paths a command writes to are :class:`OutputDir` / :class:`OutputFile`
  options: :func:`check_outputs` tries each one (:func:`writable_dir`,
  :func:`writable_file`) before the command starts, and leaves nothing behind.
* No abbreviated options (:class:`Parser`): ``--kern`` is not ``--kernel``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from pybpfmap.errors import PybpfmapError, UsageError
from pybpfmap.guest import Accel
from pybpfmap.output import print_json
from pybpfmap.vm import catalog, own
from pybpfmap.vm.catalog import CatalogKernel

N = TypeVar("N", int, float)


class Parser(argparse.ArgumentParser):
    """pybpfmap's argument parser: takes no abbreviated options (``--kern`` is
    an error, not ``--kernel``; the VM relay forwards options by their exact
    names), and says a usage error in one line.  argparse makes the subparsers
    of a parser of its class, so every command's and subcommand's parser is one
    too."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """A usage error is one line (no usage dump) and exit status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class ListArg(argparse.Action):
    """Collects comma- or space-separated items, over repeated uses, without
    duplicates; checks them against ``valid`` (a sequence) when given, replaces
    an item by the items ``expand`` maps it to (``all``), and converts each
    with ``convert``."""

    def __init__(self, option_strings: Sequence[str], dest: str,
                 valid: Sequence[str] | None = None,
                 convert: Callable[[str], Any] | None = None, expand: dict | None = None,
                 **kwargs: Any):
        kwargs.setdefault("nargs", "+")
        super().__init__(option_strings, dest, **kwargs)
        self.valid, self.convert, self.expand = valid, convert, expand or {}

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        items = list(current) if isinstance(current, list) and current is not self.default \
            else []
        for value in values:
            for item in (x.strip() for x in value.split(",")):
                if not item:
                    continue
                if self.valid is not None and item not in self.valid:
                    parser.error(f"argument {option_string}: invalid choice: {item!r} "
                                 f"(choose from {', '.join(self.valid)})")
                for x in self.expand.get(item, (item,)):
                    if self.convert is not None:
                        try:
                            x = self.convert(x)
                        except (ValueError, argparse.ArgumentTypeError) as e:
                            parser.error(f"argument {option_string}: {e}")
                    if x not in items:
                        items.append(x)
        setattr(namespace, self.dest, items)


def add_list(parser: argparse.ArgumentParser, *flags: str, valid: Sequence[str] | None = None,
             convert: Callable[[str], Any] | None = None, **kwargs: Any) -> argparse.Action:
    """An option taking a list (see :class:`ListArg`)."""
    return parser.add_argument(*flags, action=ListArg, valid=valid, convert=convert, **kwargs)


def number(text: str, kind: type[N], ok: Callable[[N], bool], want: str,
           base: int = 10) -> N:
    """``text`` as an int or float (``_`` separators allowed; ints in ``base``,
    0: any prefix Python knows) for which ``ok`` holds, else
    :class:`argparse.ArgumentTypeError` saying it is not ``want``: the one
    pattern of the option types below.  NaN and infinities are never numbers."""
    try:
        value = int(text.replace("_", ""), base) if kind is int else kind(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
    if (kind is float and not math.isfinite(value)) or not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {want}")
    return value


def positive_int(text: str) -> int:
    """A count or a size: an integer > 0."""
    return number(text, int, lambda v: v > 0, "a positive integer")


def int_at_least(low: int) -> Callable[[str], int]:
    """The type of an integer option that must be ``low`` or more."""
    def convert(text: str) -> int:
        return number(text, int, lambda v: v >= low, f"an integer of at least {low}")

    convert.__name__ = f"int_at_least_{low}"
    return convert


def u32(text: str, base: int = 10) -> int:
    """A 32-bit unsigned integer: a bpf_attr field, 0 included (for the kernel
    to refuse it, which is what ``maps`` shows)."""
    return number(text, int, lambda v: 0 <= v < 1 << 32, "a 32-bit unsigned integer", base)


def positive_float(text: str) -> float:
    """A duration or a limit in seconds: a number > 0."""
    return number(text, float, lambda v: v > 0, "a positive number")


def non_negative_float(text: str) -> float:
    """Seconds where 0 means something (none, or the default): a number >= 0."""
    return number(text, float, lambda v: v >= 0, "a number of at least 0")


def accel(text: str) -> Accel:
    """How qemu runs the guest: ``kvm``, ``tcg`` or ``tcg-mttcg``."""
    try:
        return Accel(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                         f"{', '.join(a.value for a in Accel)})") from None


def byte_count(text: str) -> int:
    """Bytes: ``1048576``, ``64K``, ``32M``, ``1.5G`` (powers of 1024); more than 0."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)i?B?", text.strip(), re.IGNORECASE)
    if m is None or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bytes (e.g. 32M)")
    scale = 1024 ** " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * scale)


def memory_size(text: str) -> str:
    """A guest memory size as qemu's ``-m`` takes it: ``2G``, ``512M``, ``1.5G``,
    ``2048`` (MiB); more than 0."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", text.strip(), re.IGNORECASE)
    if m is None or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size (e.g. 2G, 512M)")
    return text.strip()


def _mkdirs(path: Path, made: list[Path]) -> None:
    """``mkdir -p path`` that appends each folder it creates to ``made``,
    outermost first."""
    try:
        path.mkdir()
    except FileNotFoundError:
        if path.parent == path:
            raise
        _mkdirs(path.parent, made)
        path.mkdir()
    except FileExistsError:
        if path.is_dir():
            return
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None
    made.append(path)


def writable_dir(option: str, path: str | os.PathLike[str]) -> None:
    """Check that ``option``'s folder ``path`` can be made (with its missing
    parents) and written in, by doing it: :class:`UsageError` with the errno
    when it cannot.  Whatever it made is removed again, either way."""
    made: list[Path] = []
    try:
        _mkdirs(Path(path), made)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UsageError(option, f"cannot write in the folder {str(path)!r}", e.errno) from None
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()


def writable_file(option: str, path: str | os.PathLike[str]) -> None:
    """Check that ``option``'s file ``path`` can be written (created in its
    folder, which must exist, or an existing file overwritten), by opening it:
    :class:`UsageError` with the errno when it cannot.  A file it created is
    removed again; an existing one is left as it was."""
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # an existing file (or a folder: EISDIR) is not truncated
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC))
            return
        os.close(fd)
        os.unlink(path)
    except OSError as e:
        raise UsageError(option, f"cannot write the file {str(path)!r}", e.errno) from None


class Output(argparse.Action):
    """An option naming a path the command writes to (stored as given);
    :func:`check_outputs` tries it with ``check`` before the command starts."""

    check: Callable[[str, Any], None] = staticmethod(writable_file)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)


class OutputFile(Output):
    """A file the command writes (its folder must exist): :func:`writable_file`."""


class OutputDir(Output):
    """A folder the command makes and writes in: :func:`writable_dir`."""

    check = staticmethod(writable_dir)


def command_parser(parser: argparse.ArgumentParser,
                   args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the (sub)command ``args`` were parsed for."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)),
                   None)
        if sub is None or getattr(args, sub.dest, None) not in sub.choices:
            return parser
        parser = sub.choices[getattr(args, sub.dest)]


def check_outputs(command: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Try every :class:`Output` path of the (sub)command parser ``command``
    (:func:`command_parser`), given in ``args`` or a default, before it starts:
    :class:`UsageError` naming the option and the errno for one it could not write."""
    for action in command._actions:
        value = getattr(args, action.dest, None)
        if isinstance(action, Output) and value is not None:
            action.check(action.option_strings[0], value)


def host_only(action: argparse.Action) -> argparse.Action:
    """Mark an option as the host's: the argv relayed to the test VM
    (:func:`guest_argv`) leaves it out, with its values."""
    action.host_only = True  # type: ignore[attr-defined]
    return action


def _values_after(action: argparse.Action, argv: list[str], start: int) -> int:
    """How many of ``argv[start:]`` are values of ``action`` (given as a
    separate word after its option string), by its ``nargs``."""
    def is_value(word: str) -> bool:
        return not word.startswith("-") or re.fullmatch(r"-\d+(\.\d+)?", word) is not None

    nargs = action.nargs
    if isinstance(nargs, int):
        return nargs
    if nargs is None:
        return 1
    if nargs == argparse.OPTIONAL:
        return 1 if start < len(argv) and is_value(argv[start]) else 0
    n = 0
    while start + n < len(argv) and is_value(argv[start + n]):
        n += 1
    return n


def guest_argv(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` (the command line from the command's name on, as typed; the
    command's parser is ``parser``) without the options marked
    :func:`host_only` and their values: what the test VM runs.  Arities come
    from the parser, and options are never abbreviated (:class:`Parser`)."""
    options = {opt: a for a in parser._actions for opt in a.option_strings}
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            out += argv[i:]
            break
        flag, eq, _ = word.partition("=")
        action = options.get(flag) if word.startswith("--") else options.get(word)
        n = 1 if action is None or eq else 1 + _values_after(action, argv, i + 1)
        if not getattr(action, "host_only", False):
            out += argv[i:i + n]
        i += n
    return out


def catalog_kernel(text: str) -> CatalogKernel:
    """One test-VM kernel: a catalog name, or the path of a kernel you bring
    (:mod:`pybpfmap.vm.own`: a directory of .deb files or a build tree)."""
    if own.looks_like_path(text):
        try:
            return own.resolve(text)
        except PybpfmapError as e:
            raise argparse.ArgumentTypeError(e.meaning) from None
    try:
        return catalog.get(text)
    except UsageError:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                         f"{', '.join(catalog.CHOICES)}, or a PATH)") from None


def add_kernel(parser: argparse.ArgumentParser, help: str, *, many: bool = True,
               default: CatalogKernel | list[CatalogKernel] | None = None,
               results: bool = True) -> None:
    """The one ``--kernel`` option: ``K[,K...]|all`` into ``args.kernels``, a list
    of :class:`CatalogKernel` (``many``), else one ``K`` into ``args.kernel``;
    host-only (:func:`host_only`), like ``--results DIR`` (``results``), the
    folder for the VM's console, dmesg and results."""
    choices = ", ".join(catalog.NAMES) + (f", {catalog.ALL}" if many else "") + \
        ", or PATH: a directory of .deb files or a kernel build tree"
    shown = ",".join(k.name for k in default) if isinstance(default, list) else (
        default.name if default else None)
    # many: a ListArg (the list conventions), each name converted by catalog_kernel
    listed = {"action": ListArg, "convert": catalog_kernel,
              "expand": {catalog.ALL: catalog.NAMES}} if many else {"type": catalog_kernel}
    host_only(parser.add_argument("--kernel", dest="kernels" if many else "kernel", metavar="K",
                                  default=default, **listed,
                                  help=f"{help}: test-VM kernels ({choices}; see `pybpfmap vm "
                                       "list`)" + (f"; default {shown}" if shown else "")))
    if results:
        host_only(parser.add_argument(
            "--results", metavar="DIR", action=OutputDir,
            help="with --kernel: the folder for the VM's console.log, dmesg.txt, stdout "
                 "and result.json (default results/<command>-<kernel>-<time>; one "
                 "subfolder per kernel when there are several)"))


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print the records as one JSON list on stdout")


def emit(args: argparse.Namespace, records: list, text: Callable[[list], str]) -> None:
    """How every command shows its records: with ``--json`` one JSON list
    (the same shape with and without ``--kernel``), else ``text(records)``."""
    if args.json:
        print_json(records)
    else:
        sys.stdout.write(text(records))
