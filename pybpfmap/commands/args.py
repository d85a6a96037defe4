"""Command-line conventions shared by every command.

* Lists: ``--types a,b``, ``--types a b`` and ``--types a --types b`` all mean
  ``[a, b]`` (:class:`ListArg`); an unknown item is a usage error naming the
  option and the choices.
* ``--kernel K``: a test-VM kernel from the catalog (:mod:`pybpfmap.vm.catalog`),
  a list of them, or ``all``; ``--results DIR`` says where the VM's console,
  dmesg and results go.
* ``--json``: the command's records as one JSON document on stdout, nothing else.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from pybpfmap.vm import catalog


class ListArg(argparse.Action):
    """Collects comma- or space-separated items, over repeated uses, without
    duplicates; checks them against ``valid`` (a sequence) when given and
    converts each with ``convert``."""

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
                if self.convert is not None:
                    try:
                        item = self.convert(item)
                    except ValueError as e:
                        parser.error(f"argument {option_string}: {e}")
                for x in self.expand.get(item, (item,)):
                    if x not in items:
                        items.append(x)
        setattr(namespace, self.dest, items)


def add_list(parser: argparse.ArgumentParser, *flags: str, valid: Sequence[str] | None = None,
             convert: Callable[[str], Any] | None = None, **kwargs: Any) -> argparse.Action:
    """An option taking a list (see :class:`ListArg`)."""
    return parser.add_argument(*flags, action=ListArg, valid=valid, convert=convert, **kwargs)


def positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise ValueError(f"{text!r}: give a positive integer")
    return value


def add_kernel(parser: argparse.ArgumentParser, what: str,
               default: list[str] | None = None) -> None:
    """``--kernel K[,K...]|all`` (dest ``kernels``) and ``--results DIR``."""
    add_list(parser, "--kernel", dest="kernels", valid=catalog.CHOICES, metavar="K",
             expand={catalog.ALL: catalog.NAMES}, default=default,
             help=f"{what} inside the test VM of these catalog kernels "
                  f"({', '.join(catalog.NAMES)}, or {catalog.ALL}); see `pybpfmap vm list`")
    parser.add_argument("--results", metavar="DIR",
                        help="with --kernel: the folder for the VM's console.log, dmesg.txt, "
                             "stdout and result.json (default results/<command>-<kernel>-"
                             "<time>; one subfolder per kernel when there are several)")


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print the records as one JSON document on stdout")
