"""Name -> class registries (passes, criteria, ...).

CLI choices, `--help` and `--list-passes` are generated from these tables, so a new
pass or criterion is one decorated class and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from compress_ir.core.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of classes; unknown names raise with the list of known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator that records `cls` under `name` (and sets `cls.name`)."""

        def deco(cls: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = cls
            try:
                cls.name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return cls

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UsageError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
