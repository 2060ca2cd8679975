"""A run's config from its sources: defaults, [paper recipe], YAML file, flags, KEY VALUE pairs.

Every way a config file or an override can be wrong (unreadable, not YAML, a key given twice,
an unknown key, a value of the wrong type) is a :class:`~dcac_config.errors.ConfigError` that
names the key and the fix.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple

import yaml
from yacs.config import CfgNode as CN

from .defaults import PAPER_ENGINES, get_default_config, paper_recipe
from .errors import ConfigError
from .names import nearest_name
from .shipped import resolve_config


def _check_keys(overrides: Mapping[str, Any], reference: CN, where: str, valid: Sequence[str], prefix: str = "") -> None:
    """Reject keys the defaults do not have, naming the nearest valid dotted key."""
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        if key not in reference:
            hint = nearest_name(full, valid)
            suggestion = f" Did you mean {hint!r}?" if hint else ""
            raise ConfigError(
                f"Unknown config key {full!r} in {where}.{suggestion} "
                f"Run `dcac config` to list every key."
            )
        if isinstance(reference[key], CN):
            if not isinstance(value, Mapping):
                raise ConfigError(f"Config key {full!r} in {where} is a section; give it sub-keys, not {value!r}.")
            _check_keys(value, reference[key], where, valid, prefix=f"{full}.")


# What a key takes, by the type of its default (yacs checks types, but lets null through and
# names only Python types when it refuses).
_KINDS = {bool: "True or False", int: "a whole number", float: "a number", str: "text ('' for none)",
          list: "a list", tuple: "a list"}


def _checked_value(key: str, value: Any, default: Any, where: str) -> Any:
    """``value`` for config ``key`` whose default is ``default``, as yacs will merge it: a whole
    number where a number is expected becomes a float (yacs would refuse ``lr: 1``); null and
    values of another type are a :class:`ConfigError` naming the key, what it takes and the value."""
    decoded = CN._decode_cfg_value(value)
    kind = _KINDS.get(type(default))
    if kind is None:  # a key without a typed default (None) takes anything
        return value
    if isinstance(default, bool):
        fits = isinstance(decoded, bool)
    elif isinstance(default, float) and isinstance(decoded, int) and not isinstance(decoded, bool):
        return float(decoded)
    elif isinstance(default, (list, tuple)):
        fits = isinstance(decoded, (list, tuple))
    else:
        fits = isinstance(decoded, type(default)) and not isinstance(decoded, bool)
    if fits:
        return value
    empty = "" if isinstance(default, bool) or decoded is not None else \
        f" (an empty value): give it one (its default is {default!r}) or leave the key out"
    raise ConfigError(f"Bad value {where}: {key} takes {kind}, not {value!r}{empty}.")


def _check_types(overrides: Mapping[str, Any], reference: CN, where: str, prefix: str = "") -> dict:
    """``overrides`` with every value checked by :func:`_checked_value` against its default in
    ``reference`` (the keys are known to exist)."""
    checked = {}
    for key, value in overrides.items():
        full, default = f"{prefix}{key}", reference[key]
        if isinstance(default, CN):
            checked[key] = _check_types(value, default, where, prefix=f"{full}.")
        else:
            checked[key] = _checked_value(full, value, default, where)
    return checked


def _all_keys(cfg: CN, prefix: str = "") -> list:
    keys = []
    for key, value in cfg.items():
        if isinstance(value, CN):
            keys.extend(_all_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _default_of(cfg: CN, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _nested(dotted: Sequence[str]) -> dict:
    out: dict = {}
    for key, value in zip(dotted[0::2], dotted[1::2]):
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _merge_dict(cfg: CN, overrides: Mapping[str, Any], where: str) -> None:
    _check_keys(overrides, cfg, where, _all_keys(cfg))
    overrides = _check_types(overrides, cfg, f"in {where}")
    try:
        cfg.merge_from_other_cfg(CN(dict(overrides)))
    except ValueError as err:  # yacs type mismatch
        raise ConfigError(f"Bad value in {where}: {err}") from None


# ------------------------------------------------------------------- config files

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _duplicate_key(node: Optional[yaml.Node], prefix: str = "",
                   walked: Optional[set] = None) -> Optional[Tuple[str, int, int]]:
    """The first key given twice in one mapping of a composed YAML document, as (dotted key, first
    line, second line), 1-based; None if there is none. ``yaml.safe_load`` silently keeps the last,
    so a setting written twice would be half ignored. Merged keys (``<<``) may be overridden, as
    YAML intends; ``walked`` guards against recursive aliases."""
    walked = set() if walked is None else walked
    if not isinstance(node, yaml.MappingNode) or id(node) in walked:
        return None
    walked.add(id(node))
    first_line: dict = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
            continue
        key, line = f"{prefix}{key_node.value}", key_node.start_mark.line + 1
        if key in first_line:
            return key, first_line[key], line
        first_line[key] = line
        found = _duplicate_key(value_node, f"{key}.", walked)
        if found:
            return found
    return None


def _config_text(path: str) -> str:
    """The text of config file ``path``, or a ConfigError saying why it cannot be read as text."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise ConfigError(f"Cannot read config file {path} ({err.strerror or err}).") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"Config file {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                          "name a YAML file, saved as UTF-8.") from None


def _yaml_position(err: yaml.YAMLError) -> str:
    """Where PyYAML found the problem: ``line L, column C`` (1-based), or '' if it does not say."""
    mark = getattr(err, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _parse_config(text: str, path: str) -> dict:
    """The mapping a config file's ``text`` holds; a ConfigError naming ``path`` and the line otherwise."""
    try:
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"Config file {path} is not valid YAML at {_yaml_position(err) or 'an unknown place'}: "
                          f"{problem}. Fix the file there (YAML indents with spaces; quote values holding ': ' "
                          "or '#').") from None
    if duplicate:
        key, first, again = duplicate
        raise ConfigError(f"Config file {path} sets {key!r} twice (lines {first} and {again}); only the last would "
                          "count. Keep one of them.")
    if loaded is None:
        raise ConfigError(f"Config file {path} is empty (or holds only comments). Put KEY: VALUE lines in it, "
                          "or leave out --config-file to use the defaults.")
    if not isinstance(loaded, dict):
        raise ConfigError(f"Config file {path} must hold a YAML mapping of keys, not {type(loaded).__name__}.")
    return loaded


def load_config_file(config_file: str) -> Tuple[str, dict]:
    """(path, settings) of a config file or shipped config name (see
    :func:`~dcac_plugin.shipped.resolve_config`); every way the file can be unusable (a folder,
    unreadable, not UTF-8, not YAML, a key given twice, empty, not a mapping) is a ConfigError."""
    if os.path.isdir(config_file):
        raise ConfigError(f"Config file {config_file} is a folder; name a YAML file (e.g. one in that folder), "
                          "or a shipped config (`dcac configs` lists them).")
    path = resolve_config(config_file)
    return path, _parse_config(_config_text(path), path)


def build_config(
    config_file: Optional[str] = None,
    opts: Sequence[str] = (),
    sources: Optional[Iterable[str]] = None,
    targets: Optional[Iterable[str]] = None,
    root: Optional[str] = None,
    transforms: Optional[Iterable[str]] = None,
) -> CN:
    """The launcher's config: defaults, [paper recipe], file, command-line flags, KEY VALUE pairs.

    ``config_file`` is a path or the name of a shipped config (``single/dcac_market1501_to_msmt17``,
    see :func:`~dcac_plugin.shipped.resolve_config`). Flags and pairs are applied in upstream
    torchreid's order (``reset_config`` then ``merge_from_list``). Unknown keys raise
    :class:`ConfigError` naming the nearest key.
    """
    if len(opts) % 2:
        raise ConfigError(f"Command-line overrides come in KEY VALUE pairs; got an odd list: {list(opts)}")
    file_overrides: dict = {}
    if config_file:
        config_file, file_overrides = load_config_file(config_file)
    cli_overrides = _nested(list(opts))
    cfg = get_default_config()
    engine = str(cli_overrides.get("engine", file_overrides.get("engine", "")))
    if engine in PAPER_ENGINES:
        _merge_dict(cfg, paper_recipe(), "the paper recipe")
    if file_overrides:
        _merge_dict(cfg, file_overrides, config_file)
    if root:
        cfg.data.root = root
    if sources:
        cfg.data.sources = list(sources)
    if targets:
        cfg.data.targets = list(targets)
    if transforms:
        cfg.data.transforms = list(transforms)
    if opts:
        _check_keys(cli_overrides, cfg, "the command line", _all_keys(cfg))
        opts = [item for key, value in zip(opts[0::2], opts[1::2])
                for item in (key, _checked_value(key, value, _default_of(cfg, key), "on the command line"))]
        try:
            cfg.merge_from_list(opts)
        except (ValueError, AssertionError) as err:
            raise ConfigError(f"Bad value on the command line: {err}") from None
    if not cfg.engine:
        cfg.engine = cfg.loss.name
    return cfg



def config_from_args(args: argparse.Namespace) -> CN:
    """The config a ``dcac train``, ``config`` or ``stats`` command line asks for (its
    ``--config-file``, ``--root``, ``-s``/``-t``, ``--transforms`` and KEY VALUE pairs)."""
    return build_config(args.config_file or None, args.opts or [], sources=args.sources, targets=args.targets,
                        root=args.root or None, transforms=args.transforms)


__all__ = ["build_config", "config_from_args", "load_config_file"]
