"""Command-line entry point: ``pybpfmap <command> ...``.

Each command lives in ``pybpfmap/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a
function taking the parsed arguments and returning an exit status.  Command
modules import heavy things (bcc, pyroute2, matplotlib) inside their
functions so that ``pybpfmap --help`` stays fast.

Every option is checked before the command's function runs: numbers when
the command line is parsed, output paths by :func:`check_outputs` (see
:mod:`pybpfmap.commands.args`).  Errors become one line and an exit status
here, and only here.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pybpfmap import __version__
from pybpfmap.commands.args import Parser, check_outputs, command_parser, guest_argv
from pybpfmap.errors import EXIT_KERNEL, PybpfmapError

# Order is the order of ``pybpfmap --help``.
COMMANDS = [
    "info",
    "maps",
    "vm",
    "stress",
    "bench",
    "bcc_compare",
    "advise",
    "report",
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pybpfmap",
        description="The truth about BPF hash maps on the running kernel.",
    )
    parser.add_argument("--version", action="version", version=f"pybpfmap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"pybpfmap.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    # The command line as typed, from the command's name on, without its
    # host-only options: what a --kernel run relays to the test VM.
    args.argv = argv[argv.index(args.command):] if args.command in argv else [args.command]
    command = command_parser(parser, args)
    args.guest_argv = guest_argv(command, args.argv)
    try:
        check_outputs(command, args)  # an unwritable --out fails before anything starts
        return int(args.func(args) or 0)
    except PybpfmapError as e:
        e.as_option({o for a in command._actions for o in a.option_strings})
        print(f"pybpfmap {args.command}: error: {e.message()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        # Everything attached or loaded is owned by a context manager, so by
        # the time we get here it has been detached.
        print(f"pybpfmap {args.command}: interrupted; everything was detached",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_KERNEL


if __name__ == "__main__":
    sys.exit(main())
