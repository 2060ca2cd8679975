"""Config values in their valid range, checked before any work: all the rules, in order.

The rules that need no model are :mod:`dcac_config.values`; the two here ask torchreid (its
optimizers) or the model (a CLIP ViT's patch size). :func:`check_values` runs them all (the launcher's ``check_config`` calls it).
"""
from __future__ import annotations

from typing import Callable, Tuple

from torchreid import optim as reid_optim
from yacs.config import CfgNode as CN

from dcac_config.errors import ConfigError
from dcac_config.names import nearest_name
from dcac_config.values import (RULES_WITHOUT_MODELS, alternatives, at_least, check_learning_rate, multiples_near,
                                value_at)

from ..models.clip_reid import CLIP_MODELS, clip_patch_size


def check_optimizer(cfg: CN) -> None:
    """``train.optim`` names one of torchreid's optimizers (it would refuse any other only once
    the data and model are built)."""
    valid = reid_optim.optimizer.AVAI_OPTIMS
    if cfg.train.optim not in valid:
        hint = nearest_name(cfg.train.optim, valid)
        raise ConfigError(f"train.optim {cfg.train.optim!r} is not one of torchreid's optimizers: "
                          f"{', '.join(valid)}." + (f" Did you mean {hint!r}?" if hint else ""))


def check_input_size(cfg: CN) -> None:
    """The input has positive sides, and for a CLIP ViT sides its patch size divides: the patch
    grid is floored, so the remainder rows or columns would be silently ignored."""
    for key in ("data.height", "data.width"):
        at_least(cfg, key, 1)
    if cfg.model.name not in CLIP_MODELS:
        return
    patch = clip_patch_size(cfg.model.name)
    for key in ("data.height", "data.width"):
        size = value_at(cfg, key)
        if size % patch:
            raise ConfigError(f"{key} {size} is not a multiple of {patch}: model {cfg.model.name} cuts its input "
                              f"into {patch}x{patch} patches and would ignore the last {size % patch} pixels. "
                              f"Set {key} to {alternatives(multiples_near(size, patch))}.")


# The model-free rules in their order, with the two that need torchreid or the model after the
# learning rate, where they have always run.
_MODEL_RULES_AT = RULES_WITHOUT_MODELS.index(check_learning_rate) + 1
RULES: Tuple[Callable[[CN], None], ...] = (RULES_WITHOUT_MODELS[:_MODEL_RULES_AT] + (check_optimizer, check_input_size)
                                           + RULES_WITHOUT_MODELS[_MODEL_RULES_AT:])


def check_values(cfg: CN) -> None:
    """Raise :class:`ConfigError` for the first value out of its range (see :data:`RULES`)."""
    for rule in RULES:
        rule(cfg)


__all__ = ["RULES", "check_input_size", "check_optimizer", "check_values"]
