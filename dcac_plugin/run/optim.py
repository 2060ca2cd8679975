"""Optimiser and learning-rate schedule: torchreid's, plus the paper's warm-up multi-step
(as the authors' code steps it, epoch by epoch)."""
from __future__ import annotations

import bisect
from typing import Any, Dict, Sequence

import torch
from torch import nn
from torchreid import optim as reid_optim

from ..engines.toolbox_kwargs import optimizer_kwargs


def warmup_multi_step_factor(epoch: int, milestones: Sequence[int], gamma: float, warmup_epochs: int,
                             warmup_factor: float) -> float:
    """The learning-rate factor of the 1-based ``epoch`` (paper 5.2, as the authors' code computes it).

    Their ``WarmupMultiStepLR`` is stepped with the 1-based epoch before each epoch trains:
    epoch e < W (``warmup_epochs``) trains at f + (1 - f) e / W (f = ``warmup_factor``), later
    ones at the full rate, each times ``gamma`` per milestone m <= e. With the paper's values
    (lr 5e-6, f 0.1, W 10, milestones 30 and 50): epoch 1 at 9.5e-7, epoch 9 at 4.55e-6,
    epochs 10-29 at 5e-6, 30-49 at 5e-7, 50-60 at 5e-8 (the paper: "multiplied with a factor of
    0.1 at the 30th and 50th epoch"; its "starts at a learning rate of 5e-7" is the warm-up's
    starting factor, at which no epoch trains).
    """
    warmup = 1.0
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        warmup = warmup_factor * (1.0 - alpha) + alpha
    return warmup * gamma ** bisect.bisect_right(sorted(milestones), epoch)


class WarmupMultiStepFactor:
    """:func:`warmup_multi_step_factor` as LambdaLR's ``lr_lambda``, which is called with the
    number of epochs already trained: the epoch about to train is that number plus one.

    A callable object rather than a closure so that LambdaLR saves its settings in
    ``state_dict`` as plain Python values. ``first_epoch`` is saved too: checkpoints written
    before the schedule followed the authors' (each epoch at the factor of the epoch before it:
    epoch 1 at 0.1x, drops at epochs 31 and 51) lack it, which is how a resume tells them apart.
    """

    def __init__(self, milestones: Sequence[int], gamma: float = 0.1, warmup_epochs: int = 10,
                 warmup_factor: float = 0.1) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_factor = float(warmup_factor)
        self.first_epoch = 1

    def __call__(self, epochs_trained: int) -> float:
        return warmup_multi_step_factor(epochs_trained + self.first_epoch, self.milestones, self.gamma,
                                        self.warmup_epochs, self.warmup_factor)


class WarmupMultiStepLR(torch.optim.lr_scheduler.LambdaLR):
    """``train.lr_scheduler warmup_multi_step``: LambdaLR over :class:`WarmupMultiStepFactor`,
    stepped after each epoch by torchreid's loop.

    On resume (after the optimizer's state, as ``load_training_state`` loads them) the learning
    rate of the epoch about to train is set from this schedule. For our own checkpoints that is
    the rate they hold already; one saved under the earlier schedule continues on the authors'
    rates from its next epoch, and the run says so.
    """

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        saved = [f for f in state_dict.get("lr_lambdas", []) if isinstance(f, dict)]
        earlier_schedule = any("first_epoch" not in f for f in saved)
        super().load_state_dict(state_dict)
        for group, base_lr, factor in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
            group["lr"] = base_lr * factor(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        if earlier_schedule:
            epoch = self.last_epoch + 1
            print(f"Learning rate: this checkpoint was saved under the earlier warmup_multi_step, which trained each "
                  f"epoch at the rate the authors' schedule gives the epoch before it (epoch 1 at "
                  f"{self.lr_lambdas[0].warmup_factor:g}x, drops one epoch late); from epoch {epoch} on this run "
                  f"follows the authors' rates (epoch {epoch}: {self._last_lr[-1]:.3g}).")


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """torchreid's ``build_optimizer`` over the trainable parameters of ``model``."""
    return reid_optim.build_optimizer(model, **optimizer_kwargs(cfg))


def build_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """``warmup_multi_step`` (ours) or any of torchreid's schedulers."""
    if cfg.train.lr_scheduler == "warmup_multi_step":
        factor = WarmupMultiStepFactor(cfg.train.stepsize, cfg.train.gamma, cfg.dcac.warmup_epochs,
                                       cfg.dcac.warmup_factor)
        return WarmupMultiStepLR(optimizer, factor)
    return reid_optim.build_lr_scheduler(optimizer, lr_scheduler=cfg.train.lr_scheduler,
                                         stepsize=list(cfg.train.stepsize), gamma=cfg.train.gamma,
                                         max_epoch=cfg.train.max_epoch)
