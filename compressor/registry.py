"""One registry per kind of plug-in (scorers, architectures).

Every plug-in registers itself with ``@REGISTRY.register(name)`` at its definition;
nothing else needs editing to add one.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import CompressorError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            raise CompressorError(
                f"unknown {self.kind} '{name}'; available: {', '.join(self.names())}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
