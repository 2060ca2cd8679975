"""Name -> builder registries for what torchreid has no registry for (engines, losses).

A registry is a small mapping with ``register`` usable as a decorator, in the
manner of fvcore/detectron2: building from a config goes through a name, never
through a central if/else.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, TypeVar

from dcac_config.names import nearest_name

T = TypeVar("T")


class Registry:
    """A named table of builders.

    >>> ENGINES = Registry("engine")
    >>> @ENGINES.register("baseline")
    ... class BaselineEngine: ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._table: Dict[str, Callable] = {}

    def register(self, name: str, obj: Optional[T] = None):
        """Register ``obj`` under ``name``; without ``obj`` it returns a decorator.

        Registering the same object twice under the same name is a no-op, so that
        importing a module twice (e.g. reloads in notebooks) is harmless.
        """
        if obj is None:
            return lambda o: self.register(name, o)
        existing = self._table.get(name)
        if existing is not None and existing is not obj and _qualname(existing) != _qualname(obj):
            raise KeyError(f"{self.kind} {name!r} is already registered to {_qualname(existing)}")
        self._table[name] = obj
        return obj

    def get(self, name: str) -> Callable:
        try:
            return self._table[name]
        except KeyError:
            hint = nearest_name(name, self._table)
            suggestion = f" Did you mean {hint!r}?" if hint else ""
            raise KeyError(
                f"Unknown {self.kind} {name!r}.{suggestion} Valid names: {', '.join(sorted(self._table))}"
            ) from None

    def names(self) -> list:
        return sorted(self._table)

    def __contains__(self, name: str) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._table))


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


ENGINES = Registry("engine")
LOSSES = Registry("loss")
