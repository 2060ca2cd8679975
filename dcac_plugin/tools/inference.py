"""A trained Re-ID model back from a run: what extraction, export and visualisation start from.

A run directory holds ``config.yaml`` (written by every run), ``encoder.safetensors`` (the
test-time encoder) and ``model/{best,latest}.pth.tar``. A checkpoint file alone needs the
config it was trained with (``config_file``) or sits in a run directory's ``model/`` folder.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from yacs.config import CfgNode as CN

from dcac_config.loading import build_config

from ..utils.checkpoint import (CheckpointError, apply_weights, find_run_config, find_weights, load_checkpoint,
                                weights_in)


def _num_classes(weights: Dict[str, torch.Tensor]) -> int:
    """The classifier's rows; 1 for an encoder export, which has no classifier (any size fits)."""
    classifier = weights.get("classifier.weight")
    return int(classifier.shape[0]) if classifier is not None else 1


def trained_model_loss(cfg: CN) -> str:
    """The train-mode output the run's engine asked its model for (``reid`` for ours)."""
    from ..registry import ENGINES

    return ENGINES.get(cfg.engine).model_loss if cfg.engine in ENGINES else "softmax"


def load_trained_model(source: str, config_file: Optional[str] = None,
                       opts: Sequence[str] = ()) -> Tuple[nn.Module, CN, str]:
    """(model in eval mode on CPU, its config, the weights file used) from a run directory or checkpoint.

    The architecture comes from the run's config (``model.name``, ``data.height/width``);
    pretrained weights are never downloaded, the trained ones replace them.
    """
    from ..run.launcher import build_model  # the launcher imports the engines; keep this module light

    if not osp.exists(source):
        # Checked first: otherwise it would surface as a missing config.yaml, the wrong fix.
        raise CheckpointError(f"No run directory or checkpoint at {source}.")
    config_file = config_file or find_run_config(source)
    if config_file is None:
        raise CheckpointError(f"No config.yaml found for {source}: pass the config the model was trained with "
                              "(--config-file).")
    cfg = build_config(config_file, list(opts) + ["model.pretrained", "False", "model.load_weights", "",
                                                  "model.resume", ""])
    path = find_weights(source)
    weights = weights_in(load_checkpoint(path), path)
    # As the run built it: our engines put the Re-ID head on a torchreid model (ToolboxReID).
    model = build_model(cfg, _num_classes(weights), trained_model_loss(cfg), use_gpu=False)
    apply_weights(model, weights, path)
    return model.eval(), cfg, path


def image_paths(source: str, extensions: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")) -> list:
    """Images of a folder (recursively, sorted) or of a text file listing one path per line."""
    if osp.isdir(source):
        found = [osp.join(folder, name) for folder, _, names in os.walk(source) for name in names
                 if name.lower().endswith(extensions)]
        return sorted(found)
    if osp.isfile(source):
        base = osp.dirname(osp.abspath(source))
        with open(source, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
        return [line if osp.isabs(line) else osp.join(base, line) for line in lines]
    raise FileNotFoundError(f"No image folder or list file at {source}.")


__all__ = ["find_run_config", "find_weights", "image_paths", "load_trained_model"]
