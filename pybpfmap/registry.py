"""Kinds as objects, found by the name an option or a record gives them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from pybpfmap.errors import UsageError


class Named(Protocol):
    name: str


T = TypeVar("T", bound=Named)


class Registry(dict[str, T]):
    """The objects of one kind by name, in the order given (an option's choices)."""

    def __init__(self, param: str, items: Iterable[T]):
        super().__init__((item.name, item) for item in items)
        self.param = param

    def named(self, name: str) -> T:
        """The object ``name`` names: a :class:`UsageError` on ``param`` when none does."""
        try:
            return self[name]
        except KeyError:
            raise UsageError(self.param, f"{name!r} is not one of {', '.join(self)}") from None
