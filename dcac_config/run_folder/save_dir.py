"""Whether a run may write into its ``data.save_dir``: never over another run unless asked.

A run writes ``config.yaml``, ``results.json``, ``encoder.safetensors``, ``model/*.pth.tar``
and TensorBoard event files into its save_dir, over whatever was there. A save_dir that
already holds another run's outputs is refused before any work, unless the run continues
that run (``model.resume`` names it) or starts over in it (``data.overwrite True``: the earlier
outputs are deleted when the new run starts, so the folder never mixes two runs). Logs are
not outputs (they are named by their start time and never overwritten), so a folder that
holds only the log of a failed start is free.
"""
from __future__ import annotations

import contextlib
import os
import os.path as osp
from typing import Dict, List

from yacs.config import CfgNode as CN

from dcac_config.errors import ConfigError

RUN_FILES = ("config.yaml", "results.json", "encoder.safetensors")
EVENTS_PREFIX = "events.out.tfevents."
CHECKPOINT_FOLDER = "model"
LATEST = "latest.pth.tar"
BEST = "best.pth.tar"
# A file being written atomically is a ``.tmp-*`` file beside its target until it is complete.
TEMPORARY_PREFIX = ".tmp-"
# How many outputs a message lists before "and N more".
LISTED = 4


def checkpoint_paths(save_dir: str, name: str = CHECKPOINT_FOLDER) -> Dict[str, str]:
    """Where an engine writes its checkpoints: ``latest`` and ``best`` beside torchreid's numbered ones."""
    folder = osp.join(save_dir, name)
    return {"latest": osp.join(folder, LATEST), "best": osp.join(folder, BEST)}


def _names(folder: str) -> List[str]:
    try:
        return sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []


def run_outputs(save_dir: str) -> List[str]:
    """The outputs of a run that ``save_dir`` holds, as paths relative to it (empty when none)."""
    found = [name for name in RUN_FILES if osp.isfile(osp.join(save_dir, name))]
    found += [name for name in _names(save_dir) if name.startswith(EVENTS_PREFIX)]
    found += [osp.join(CHECKPOINT_FOLDER, name) for name in _names(osp.join(save_dir, CHECKPOINT_FOLDER))
              if ".pth.tar" in name]
    return found


def is_inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies below it (links resolved)."""
    path, folder = osp.realpath(path), osp.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def continues_run(cfg: CN) -> bool:
    """The run resumes training the run in its save_dir (``model.resume`` names that folder
    or a checkpoint in it). An evaluation does not: it would replace that run's results.json."""
    return bool(cfg.model.resume) and not cfg.test.evaluate and is_inside(cfg.model.resume, cfg.data.save_dir)


def _listing(outputs: List[str]) -> str:
    shown = ", ".join(outputs[:LISTED])
    return shown + (f" and {len(outputs) - LISTED} more" if len(outputs) > LISTED else "")


def occupied_error(cfg: CN, outputs: List[str]) -> ConfigError:
    """The refusal for a save_dir holding another run, with every way out."""
    save_dir = cfg.data.save_dir
    held = f"data.save_dir {save_dir} already holds a run ({_listing(outputs)})"
    if cfg.test.evaluate:
        return ConfigError(f"{held}; this evaluation (test.evaluate True) would overwrite its config.yaml and "
                           f"results.json. Set data.save_dir to another folder (e.g. {osp.join(save_dir, 'eval')}), "
                           "or data.overwrite True to replace that run (its outputs are deleted).")
    return ConfigError(f"{held}; this run would overwrite it. To continue that run, set model.resume {save_dir}; to "
                       "start over in that folder, set data.overwrite True (its outputs are deleted when this run "
                       "starts); or set data.save_dir to another folder.")


def check_inputs_kept(cfg: CN) -> None:
    """Starting over deletes the earlier run: a run must not read its weights from it."""
    for key, value in (("model.load_weights", cfg.model.load_weights), ("model.resume", cfg.model.resume)):
        if value and is_inside(value, cfg.data.save_dir):
            raise ConfigError(f"data.overwrite True deletes the earlier run in data.save_dir {cfg.data.save_dir}, and "
                              f"{key} {value} is part of it. Set data.save_dir to another folder, or copy the "
                              "weights out of it first.")


def check_save_dir(cfg: CN) -> List[str]:
    """Refuse, before any work, a save_dir holding another run's outputs unless the run
    continues it or ``data.overwrite`` is set; returns the outputs this run replaces (to
    delete when it starts; empty when there are none or it continues them).

    Every rank of a torchrun job calls this (it only reads); rank 0 alone deletes.
    """
    outputs = run_outputs(cfg.data.save_dir)
    if not outputs or continues_run(cfg):
        return []
    if not cfg.data.overwrite:
        raise occupied_error(cfg, outputs)
    check_inputs_kept(cfg)
    return outputs


def remove_outputs(save_dir: str, outputs: List[str]) -> None:
    """Delete the earlier run's ``outputs`` (``data.overwrite True``), saying which."""
    for name in outputs:
        with contextlib.suppress(FileNotFoundError):
            os.remove(osp.join(save_dir, name))
    print(f"data.overwrite True: deleted the earlier run's outputs in {save_dir} ({_listing(outputs)}); its logs stay.")


__all__ = ["BEST", "CHECKPOINT_FOLDER", "EVENTS_PREFIX", "LATEST", "RUN_FILES", "TEMPORARY_PREFIX", "check_save_dir",
           "checkpoint_paths", "continues_run", "is_inside", "remove_outputs", "run_outputs"]
