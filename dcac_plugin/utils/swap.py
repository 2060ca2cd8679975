"""One name temporarily bound to another value, put back afterwards, also when the work fails.

torchreid has no hook where we need another behaviour for one call (the class its dataset
table builds for ``msmt17``, the transforms its data manager builds, the model its engines'
training step calls): the name it looks up is swapped for the duration of that call only,
so nothing outside the call ever sees the replacement.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import MutableMapping
from typing import Any, Iterator


@contextlib.contextmanager
def swapped(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` (``owner[name]`` when ``owner`` is a mapping) is ``value`` while active."""
    if isinstance(owner, MutableMapping):
        previous, bind = owner[name], owner.__setitem__
    else:
        previous, bind = getattr(owner, name), functools.partial(setattr, owner)
    bind(name, value)
    try:
        yield
    finally:
        bind(name, previous)


__all__ = ["swapped"]
