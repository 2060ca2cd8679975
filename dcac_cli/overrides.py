"""Trailing ``KEY VALUE`` config overrides, also where a list flag or ``--`` stands before them.

Upstream torchreid's launcher takes the overrides as the trailing words (``argparse.REMAINDER``).
A list flag (``-s``, ``-t``, ``--transforms``, ``dcac demo --engines``: ``nargs="+"``) takes every
word up to the next option, so ``-t msmt17 train.max_epoch 2`` would read the override as two more
datasets, and a ``--`` before the overrides would reach the config as a key. Here a list ends at
the first word that names a config key (:func:`starts_overrides`): that word and the rest are the
overrides; a ``--`` before the trailing overrides is dropped.
"""
from __future__ import annotations

import argparse
from typing import Any, List, Optional, Sequence, Tuple

from .choices import CONFIG_KEYS, CONFIG_SECTIONS

OVERRIDES_DEST = "opts"
SEPARATOR = "--"


def starts_overrides(word: str) -> bool:
    """Whether ``word`` names a config key (``engine``, ``use_gpu``, or ``SECTION.key`` of a
    config section), so the overrides begin there. No engine, dataset or transform name is one:
    a misspelt key of a known section still counts, and the config then names the nearest key."""
    section, dot, _ = word.partition(".")
    return section in CONFIG_SECTIONS if dot else word in CONFIG_KEYS


def split_listed(words: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``(listed, overrides)``: the words before the first one that starts the overrides, and the rest."""
    end = next((index for index, word in enumerate(words) if starts_overrides(word)), len(words))
    return list(words[:end]), list(words[end:])


def add_overrides(namespace: argparse.Namespace, words: Sequence[str]) -> None:
    """Append ``words`` to the overrides parsed so far (argv order: a list flag's come first)."""
    setattr(namespace, OVERRIDES_DEST, list(getattr(namespace, OVERRIDES_DEST, None) or []) + list(words))


class ListThenOverrides(argparse.Action):
    """A list flag (``nargs="+"``) whose words end where the overrides begin; those go to
    ``opts``. ``names``, if given, are the only words the list takes (checked here: argparse's
    ``choices`` would reject the overrides too)."""

    def __init__(self, option_strings: List[str], dest: str, names: Optional[Sequence[str]] = None,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="+", **kwargs)
        self.names = tuple(names or ())

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        listed, overrides = split_listed(values)
        flag = "/".join(self.option_strings)
        if not listed:
            parser.error(f"argument {flag}: expected at least one {self.metavar} before the KEY VALUE overrides "
                         f"({overrides[0]!r} names a config key)")
        unknown = [word for word in listed if self.names and word not in self.names]
        if unknown:
            parser.error(f"argument {flag}: invalid choice: {unknown[0]!r} (choose from {', '.join(self.names)}; "
                         "KEY VALUE overrides may follow them)")
        setattr(namespace, self.dest, listed)
        add_overrides(namespace, overrides)


class TrailingOverrides(argparse.Action):
    """The trailing ``KEY VALUE`` words (``argparse.REMAINDER``), after any a list flag passed on.
    A leading ``--`` is dropped; an option among the keys is refused (``REMAINDER`` takes it as a
    word, and no config key starts with ``-``)."""

    def __init__(self, option_strings: List[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=argparse.REMAINDER, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        words = list(values)
        if words[:1] == [SEPARATOR]:
            words = words[1:]
        add_overrides(namespace, words)
        keys = getattr(namespace, OVERRIDES_DEST)[::2]
        options = [key for key in keys if key.startswith("-")]
        if options:
            parser.error(f"option {options[0]} after the KEY VALUE overrides: options go before them "
                         f"(here before {keys[0]!r})")


def add_overrides_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """The trailing ``opts`` positional that :class:`ListThenOverrides` flags add to."""
    parser.add_argument(OVERRIDES_DEST, action=TrailingOverrides, default=None, help=help_text)
