"""Optimiser and learning-rate schedule: torchreid's, plus the paper's warm-up multi-step."""
from __future__ import annotations

import bisect
from typing import Sequence

import torch
from torch import nn

from torchreid import optim as reid_optim

from .config import optimizer_kwargs


class WarmupMultiStepFactor:
    """LR factor per epoch (paper 5.2): linear warm-up from ``warmup_factor`` over
    ``warmup_epochs``, then x``gamma`` at each milestone.

    A callable object rather than a closure so that LambdaLR saves its settings in
    ``state_dict`` as plain Python values.
    """

    def __init__(self, milestones: Sequence[int], gamma: float = 0.1, warmup_epochs: int = 10,
                 warmup_factor: float = 0.1) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, epoch: int) -> float:
        warmup = 1.0
        if epoch < self.warmup_epochs:
            alpha = epoch / self.warmup_epochs
            warmup = self.warmup_factor * (1.0 - alpha) + alpha
        return warmup * self.gamma ** bisect.bisect_right(self.milestones, epoch)


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """torchreid's ``build_optimizer`` over the trainable parameters of ``model``."""
    return reid_optim.build_optimizer(model, **optimizer_kwargs(cfg))


def build_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """``warmup_multi_step`` (ours) or any of torchreid's schedulers."""
    if cfg.train.lr_scheduler == "warmup_multi_step":
        factor = WarmupMultiStepFactor(cfg.train.stepsize, cfg.train.gamma, cfg.dcac.warmup_epochs,
                                       cfg.dcac.warmup_factor)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return reid_optim.build_lr_scheduler(optimizer, lr_scheduler=cfg.train.lr_scheduler,
                                         stepsize=list(cfg.train.stepsize), gamma=cfg.train.gamma,
                                         max_epoch=cfg.train.max_epoch)
