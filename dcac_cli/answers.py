"""What ``dcac`` answers before it imports torch, torchreid, diffusers or peft.

Importing ``dcac_plugin`` registers everything into torchreid and takes seconds (tens of
seconds on a busy machine). ``dcac configs`` and ``dcac config`` need none of it, and neither do
the errors of a config (file or name not found, YAML error, unknown key, value out of range), nor a
training run's missing data root or dataset folder: :func:`check_before_import` finds those with
:mod:`dcac_config` alone, so a misspelt name or a wrong ``--root`` costs a moment, not a model
import.
"""
from __future__ import annotations

import argparse
import os

from yacs.config import CfgNode as CN

from dcac_config.errors import UsageError
from dcac_config.layouts import DatasetLayoutError, check_dataset_folders
from dcac_config.loading import config_from_args
from dcac_config.run_folder.run_output import run_output, show_configuration
from dcac_config.shipped import DEMO_GROUP, PAPER_GROUPS, config_group, shipped_configs, shipped_run_lists
from dcac_config.values import check_values_without_models

# The commands that build a run's config from --config-file, flags and KEY VALUE pairs.
CONFIG_COMMANDS = ("train", "config", "stats")
# Set by torchrun in every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def check_before_import(args: argparse.Namespace) -> None:
    """Raise the errors of ``args`` that need no model: the config's (file, YAML, keys, types,
    values out of range) and, for ``train``, a missing data root or dataset folder. The command
    checks everything again, and the rest, once it has imported ``dcac_plugin``."""
    if args.command not in CONFIG_COMMANDS:
        return
    cfg = config_from_args(args)
    if args.command == "config":
        return  # it prints the config as asked, values and all
    check_values_without_models(cfg)
    if args.command == "train":
        refuse_missing_dataset_folders(cfg)


def refuse_missing_dataset_folders(cfg: CN) -> None:
    """End a training run whose data root or dataset folder is missing as the run itself would
    end it, without importing a model: under its run folder's rules (its lock; a folder holding
    another run refused first), its configuration printed and logged with the error, nothing left
    in a folder made for it, the log kept in one that existed. The rest of the layout (sub-folders,
    image names) the run checks once it has imported ``dcac_plugin``. Under torchrun the run's own
    check of the launch environment comes first, so this is left to it."""
    if any(name in os.environ for name in TORCHRUN_VARIABLES):
        return
    try:
        check_dataset_folders([*cfg.data.sources, *cfg.data.targets], cfg.data.root)
    except DatasetLayoutError:
        with run_output(cfg):
            show_configuration(cfg)
            raise


def cmd_config(args: argparse.Namespace) -> int:
    """``dcac config``: the merged config, as YAML."""
    print(config_from_args(args).dump())
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    """``dcac configs [FILTER]``: the shipped configs by group, then the run lists, by name."""
    text = args.filter.lower()
    configs = [name for name in shipped_configs() if text in name.lower()]
    run_lists = [name for name in shipped_run_lists() if text in name.lower()]
    if not configs and not run_lists:
        raise UsageError(f"No shipped config or run list name contains {args.filter!r}; `dcac configs` lists them all.")
    for group in (*PAPER_GROUPS, DEMO_GROUP):
        names = [name for name in configs if config_group(name) == group]
        if names:
            print(f"{group} ({len(names)}):\n" + "\n".join(f"  {name}" for name in names))
    if run_lists:
        print(f"run lists of dcac experiments ({len(run_lists)}):\n  " + " ".join(run_lists))
    print("\nPass a config's name (or a path) to --config-file of train, config, stats, extract and export, "
          "or names to dcac experiments.")
    return 0


__all__ = ["CONFIG_COMMANDS", "check_before_import", "cmd_config", "cmd_configs", "refuse_missing_dataset_folders"]
