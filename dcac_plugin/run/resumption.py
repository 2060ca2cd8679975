"""What ``model.resume`` continues, and what of this config it may change.

A resume restores the checkpoint's model, optimizer (with its hyperparameters), schedule,
engine state and random streams, so a key of this config that differs from the resumed
run's would be recorded in ``config.yaml`` but not used. Before any work the resumed run's
``config.yaml`` is compared with this config (:mod:`~dcac_config.run_settings` names the key
classes): keys a resume cannot change are refused, naming them; the others are applied and
said in the log: more epochs, another learning rate (scaled into the restored schedule,
:func:`apply_learning_rates`), another precision, the evaluation, how it runs.
"""
from __future__ import annotations

import os.path as osp
from typing import Dict, List, Optional

from yacs.config import CfgNode as CN

from dcac_config.errors import ConfigError
from dcac_config.run_folder.save_dir import RUN_FILES
from dcac_config.run_settings import (EVALUATION, HOW_IT_RUNS, RESUME_APPLIES, RUN_PLACE, SCHEDULES_SPANNING_MAX_EPOCH,
                                      describe, differences, in_class, recorded_settings, settings_of)

from ..utils.checkpoint import CheckpointError, find_run_config, is_torch_save_file

CHECKPOINTS = "latest.pth.tar, best.pth.tar or model.pth.tar-<epoch>"
MAY_CHANGE = ("train.max_epoch, train.lr, train.base_lr_mult, train.amp, the evaluation (test.*, data.targets) and "
              "how it runs (data.workers, devices, speed options, train.print_freq)")


def checked_checkpoint_file(path: str) -> str:
    """``path`` itself when it is a file ``torch.save`` wrote; another file of a run (its
    results.json, config.yaml) is refused naming the files ``model.resume`` takes."""
    if osp.isfile(path) and not path.endswith(".safetensors") and not is_torch_save_file(path):
        name = osp.basename(path)
        what = f"the run's {name}" if name in RUN_FILES else "not a file torch.save wrote"
        raise CheckpointError(f"model.resume {path} is not a checkpoint ({what}). model.resume takes a run's folder "
                              f"(its model/latest.pth.tar) or one of the checkpoints in the run's model/ folder: "
                              f"{CHECKPOINTS}.")
    return path


def _resumable_keys(recorded: Dict[str, object]) -> tuple:
    """The key classes a resume may change; train.max_epoch not where the restored schedule spans it."""
    applies = RESUME_APPLIES
    if recorded.get("train.lr_scheduler") in SCHEDULES_SPANNING_MAX_EPOCH:
        applies = tuple(key for key in applies if key != "train.max_epoch")
    return RUN_PLACE + HOW_IT_RUNS + EVALUATION + applies


def check_resume_settings(cfg: CN, checkpoint: str) -> List[str]:
    """Compare this config with the ``config.yaml`` of the run ``checkpoint`` belongs to: refuse
    (:class:`ConfigError`) another engine or any key a resume cannot change, naming them and both
    values; returns the log lines saying what this config changes (or that there is no
    ``config.yaml`` to compare with)."""
    config = find_run_config(checkpoint)
    recorded = recorded_settings(config) if config else None
    if recorded is None:
        return [f"Resume: no readable config.yaml beside {checkpoint}, so this config is not compared with the "
                "resumed run's; the model, data, optimizer and schedule must be that run's (they are restored as "
                "they were)."]
    asked = settings_of(cfg)
    engine = recorded.get("engine")
    if engine is not None and engine != asked["engine"]:
        raise ConfigError(
            f"model.resume {checkpoint} was written by a run of engine {engine or repr('')} ({config}), and this run's "
            f"engine is {asked['engine']}: a resume continues a run with its own engine, optimizer and state. To start "
            f"a {asked['engine']} run from its weights, set model.load_weights {checkpoint} instead (and leave out "
            "model.resume), in a data.save_dir of its own.")
    found = differences(recorded, asked, ignored=())
    allowed = _resumable_keys(recorded)
    refused = [item for item in found if not in_class(item.key, allowed)]
    if refused:
        raise ConfigError(
            f"model.resume {checkpoint} continues the run of {config}, and this config changes "
            f"{len(refused)} key{'s' if len(refused) > 1 else ''} a resume cannot: {describe(refused)}. The resume "
            "restores that run's model, optimizer, schedule and state as they were, so these would be recorded but "
            "not used. Set them as the run had them (or leave them out), or start a new run from its weights with "
            f"model.load_weights {checkpoint} in another data.save_dir. A resume may change {MAY_CHANGE}.")
    applied = [item for item in found if not in_class(item.key, RUN_PLACE)]
    if not applied:
        return []
    return [f"Resume: this config changes {describe(applied, limit=len(applied))}; applied from the resumed epoch on."]


def epochs_left(checkpoint: str, epoch: int, cfg: CN) -> str:
    """The log line of a resume at ``epoch``; a ``train.max_epoch`` below it is refused (the
    recorded config would claim fewer epochs than the model has had)."""
    line = f"Resumed from {checkpoint} at epoch {epoch}"
    if cfg.test.evaluate:
        return line
    if epoch > cfg.train.max_epoch:
        raise ConfigError(f"train.max_epoch {cfg.train.max_epoch} is below epoch {epoch} of model.resume {checkpoint}: "
                          f"its model has trained {epoch} epochs. Set train.max_epoch to {epoch} (nothing more to "
                          "train: the run only evaluates) or more.")
    if epoch == cfg.train.max_epoch:
        return (f"{line} of train.max_epoch {epoch}: nothing is left to train, so this run only evaluates; raise "
                "train.max_epoch to train further.")
    return line


def asked_learning_rates(engine) -> Dict[str, List[float]]:
    """The initial learning rate of every parameter group as this config built them, per model
    of the engine (read before the checkpoint's optimizer state replaces them)."""
    return {name: [group.get("initial_lr", group["lr"]) for group in engine._optims[name].param_groups]
            for name in engine.get_model_names()}


def apply_learning_rates(engine, asked: Dict[str, List[float]]) -> Optional[str]:
    """Put this config's learning rates into the restored optimizer and schedule: each group's
    rate and the schedule's base rate scaled by new / old initial rate, so the schedule goes on
    from the resumed epoch at the new scale (every schedule here is proportional to its base
    rate). Returns the log line, or None when the rates are the checkpoint's."""
    changed = []
    for name, rates in asked.items():
        optimizer, scheduler = engine._optims[name], engine._scheds.get(name)
        for index, (group, new) in enumerate(zip(optimizer.param_groups, rates)):
            old = group.get("initial_lr", group["lr"])
            if old == new:
                continue
            group["lr"] *= new / old
            group["initial_lr"] = new
            if scheduler is not None and hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs[index] = new
            changed.append((old, new))
        if changed and scheduler is not None and hasattr(scheduler, "_last_lr"):
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    if not changed:
        return None
    (old, new), count = changed[0], len(changed)
    return (f"Resume: learning rates of this config: {count} parameter group{'s' if count > 1 else ''} from initial "
            f"{old:g} to {new:g} (x{new / old:g}), the restored schedule scaled alike; now "
            f"{engine._optims[next(iter(asked))].param_groups[-1]['lr']:g}.")


__all__ = ["apply_learning_rates", "asked_learning_rates", "check_resume_settings", "checked_checkpoint_file",
           "epochs_left"]
