"""The configs and run lists shipped inside the package, by name.

After a plain ``pip install`` there is no ``configs/`` folder beside the user: the paper's
configs are package data under ``dcac_config/configs/paper/``. So every place that takes a
config path also takes a shipped config's name, ``single/dcac_market1501_to_msmt17`` (also
with ``.yaml``, and with a leading ``configs/`` as command lines written for a clone have
it), and the same command line works from any directory. A path to an existing file always
wins over a name.
"""
from __future__ import annotations

import glob
import os.path as osp
from typing import Dict, Optional

from .errors import ConfigError
from .generators.rendering import PAPER_CONFIG_DIR
from .names import nearest_names

CONFIG_DIR = osp.join(osp.dirname(osp.abspath(__file__)), "configs")
# Folders of the paper's configs, in the order `dcac configs` lists them; the demo configs
# (configs/demo_<run>.yaml) are named without a folder.
PAPER_GROUPS = ("single", "multi", "ablations", "toolbox", "classical", "released")
DEMO_GROUP = "demo"
CONFIG_SUFFIXES = (".yaml", ".yml")
RUN_LIST_SUFFIX = ".txt"
# What a clone's command line puts before a shipped name: the repository's configs/ links to configs/paper/.
CLONE_PREFIX = "configs/"


def _stem(path: str) -> str:
    return osp.splitext(osp.basename(path))[0]


def shipped_configs() -> Dict[str, str]:
    """``{name: path}`` of every shipped config: ``single/...``, ``multi/...``, ``ablations/...``
    (the paper's protocols and ablations), ``toolbox/...`` (torchreid's models beside DCAC) and
    ``demo_<run>`` (the embedded demo)."""
    found = {f"{group}/{_stem(path)}": path for group in PAPER_GROUPS
             for path in sorted(glob.glob(osp.join(PAPER_CONFIG_DIR, group, "*.yaml")))}
    found.update({_stem(path): path for path in sorted(glob.glob(osp.join(CONFIG_DIR, "demo_*.yaml")))})
    return found


def shipped_run_lists() -> Dict[str, str]:
    """``{'table2': path, ...}``: the run lists of the paper's tables that ``dcac experiments`` takes by name."""
    paths = glob.glob(osp.join(PAPER_CONFIG_DIR, "lists", "*.txt"))
    # table2 ... table9 before table10.
    return {_stem(path): path for path in sorted(paths, key=lambda path: (len(_stem(path)), _stem(path)))}


def config_group(name: str) -> str:
    """``single``, ``multi``, ``ablations`` or ``demo``: where a shipped config's name puts it."""
    return name.split("/", 1)[0] if "/" in name else DEMO_GROUP


def _name(text: str, suffixes: tuple, folder: str = "") -> str:
    """``text`` as a shipped name: forward slashes, without ``./``, ``configs/``, ``folder`` or a suffix."""
    name = text.replace("\\", "/")
    for prefix in ("./", CLONE_PREFIX, folder):
        if prefix and name.startswith(prefix):
            name = name[len(prefix):]
    for suffix in suffixes:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _config_name(text: str) -> str:
    return _name(text, CONFIG_SUFFIXES)


def _run_list_name(text: str) -> str:
    return _name(text, (RUN_LIST_SUFFIX,), folder="lists/")


def shipped_config(text: str) -> Optional[str]:
    """The path of the shipped config ``text`` names, or None."""
    return shipped_configs().get(_config_name(text))


def shipped_run_list(text: str) -> Optional[str]:
    """The path of the shipped run list ``text`` names (``table2``, ``configs/lists/table2.txt``), or None."""
    return shipped_run_lists().get(_run_list_name(text))


def _resolve(text: str, kind: str, shipped: Dict[str, str], name: str) -> str:
    """``text`` when it is a file, else ``shipped[name]``; else an error naming the nearest names."""
    if osp.isfile(text):
        return text
    if name in shipped:
        return shipped[name]
    close = nearest_names(name, shipped)
    hint = f" Nearest shipped names: {', '.join(close)}." if close else ""
    raise ConfigError(f"{kind} not found: {text} is neither a file nor the name of a shipped one.{hint} "
                      "`dcac configs` lists them all.")


def resolve_config(text: str) -> str:
    """The config file ``text`` stands for: itself when it is a file, else the shipped config
    it names. Raises :class:`ConfigError` naming the nearest shipped names."""
    return _resolve(text, "Config file", shipped_configs(), _config_name(text))


def resolve_run_list(text: str) -> str:
    """The run list ``text`` stands for: itself when it is a file, else the shipped list it names."""
    return _resolve(text, "Run list", shipped_run_lists(), _run_list_name(text))


def demo_config_path(run: str) -> str:
    """The shipped config of demo run ``run`` (``softmax``, ``dcac_osnet``, ``baseline``, ``dcac``;
    package data, whatever the current directory)."""
    return osp.join(CONFIG_DIR, f"demo_{run}.yaml")


__all__ = ["CONFIG_DIR", "config_group", "demo_config_path", "resolve_config", "resolve_run_list", "shipped_config", "shipped_configs",
           "shipped_run_list", "shipped_run_lists"]
