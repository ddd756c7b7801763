"""One small registry used for models, data sets, methods and recipes.

Names are user-facing: lower case with hyphens (``fashion-mnist``); ``_`` and
upper case are accepted and normalized, so ``Fashion_MNIST`` finds the same entry.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cnnlab.errors import RegistryError

T = TypeVar("T")


def normalize_name(name: str) -> str:
    """Canonical form of a registry name: lower case, ``_`` and spaces as ``-``."""
    return str(name).strip().lower().replace("_", "-").replace(" ", "-")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with its name, one-line description and free metadata."""

    name: str
    obj: T
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> object map with helpful errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, description: str = "", **meta: Any) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; returns ``obj`` unchanged."""

        def deco(obj: T) -> T:
            self.add(name, obj, description=description, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, *, description: str = "", **meta: Any) -> None:
        key = normalize_name(name)
        if key in self._entries:
            raise ValueError(f"{self.kind} {key!r} is registered twice")
        if not description and getattr(obj, "__doc__", None):
            description = obj.__doc__.strip().splitlines()[0]
        self._entries[key] = Entry(key, obj, description, dict(meta))

    def entry(self, name: str) -> Entry[T]:
        key = normalize_name(name)
        try:
            return self._entries[key]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
            ) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self, pattern: str | None = None) -> list[str]:
        names = sorted(self._entries)
        if pattern:
            names = [n for n in names if fnmatch.fnmatch(n, normalize_name(pattern))]
        return names

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
