"""The paper recipe's learning rate in every epoch, as the authors' code gives it.

Their ``WarmupMultiStepLR`` (warm-up factor 0.1 over 10 epochs, x0.1 at milestones 30 and 50,
base 5e-6) is stepped with the 1-based epoch before each epoch trains. The rates below are
checked where the optimizer steps with them: inside torchreid's own epoch loop (our engines'
``RunRecordMixin`` over torchreid's ``Engine``), through a checkpoint and resume mid-schedule,
and from a checkpoint saved under our earlier schedule (each epoch one epoch late).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Dict

import pytest
import torch
from torch import nn
from torchreid import engine as reid_engine

from dcac_config.loading import build_config
from dcac_config.run_folder.save_dir import checkpoint_paths
from dcac_plugin.engines.common import RunRecordMixin
from dcac_plugin.engines.toolbox_kwargs import device_kwargs
from dcac_plugin.run.launcher import resume
from dcac_plugin.run.optim import WarmupMultiStepLR, build_optimizer, build_scheduler, warmup_multi_step_factor
from dcac_plugin.utils.checkpoint import atomic_save, load_checkpoint

EPOCHS = 60
# Epoch 1..60 of the paper recipe, as the authors' runs train them: 5e-6 x (0.1 + 0.9 e / 10)
# for e < 10, then 5e-6, x0.1 from epoch 30 and again from epoch 50.
AUTHORS_RATES = ([9.5e-7, 1.4e-6, 1.85e-6, 2.3e-6, 2.75e-6, 3.2e-6, 3.65e-6, 4.1e-6, 4.55e-6]
                 + [5e-6] * 20 + [5e-7] * 20 + [5e-8] * 11)


def authors_formula(epoch: int) -> float:
    """Their scheduler's rate with ``last_epoch`` set to the 1-based ``epoch``: linear warm-up
    factor f (1 - e / W) + e / W below W epochs, times gamma per milestone m <= e."""
    warmup = 0.1 * (1 - epoch / 10) + epoch / 10 if epoch < 10 else 1.0
    return 5e-6 * warmup * 0.1 ** sum(1 for milestone in (30, 50) if milestone <= epoch)


def paper_config():
    """The paper recipe as engines baseline and dcac start from it."""
    cfg = build_config(None, ["engine", "baseline"])
    assert (cfg.train.lr, cfg.train.max_epoch, cfg.train.lr_scheduler, list(cfg.train.stepsize), cfg.train.gamma,
            cfg.dcac.warmup_epochs, cfg.dcac.warmup_factor) == (5e-6, EPOCHS, "warmup_multi_step", [30, 50], 0.1, 10, 0.1)
    return cfg


class LearningRateProbe(RunRecordMixin, reid_engine.Engine):
    """torchreid's epoch loop (train, update_lr, checkpoints) over one batch per epoch; each
    step records the learning rate the optimizer steps with, by 1-based epoch."""

    def __init__(self) -> None:
        manager = SimpleNamespace(train_loader=[{"x": torch.ones(2, 3)}], test_loader={})
        super().__init__(manager, **device_kwargs(reid_engine.Engine.__init__, False))
        torch.manual_seed(0)
        cfg = paper_config()
        self.model = nn.Linear(3, 2)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.register_model("model", self.model, self.optimizer, self.scheduler)
        self.rates: Dict[int, float] = {}

    def forward_backward(self, data):
        self.rates[self.epoch + 1] = self.optimizer.param_groups[0]["lr"]
        loss = self.model(data["x"]).square().mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def test(self, *args, **kwargs):
        return 0.0  # nothing to evaluate: the loop's final test only triggers the checkpoints

    def train_epochs(self, save_dir: str, max_epoch: int, start_epoch: int = 0) -> None:
        self.run(save_dir=save_dir, max_epoch=max_epoch, start_epoch=start_epoch, print_freq=1000)


def test_the_sixty_rates_are_the_authors():
    assert len(AUTHORS_RATES) == EPOCHS
    assert [authors_formula(e) for e in range(1, EPOCHS + 1)] == pytest.approx(AUTHORS_RATES, rel=1e-12)
    ours = [5e-6 * warmup_multi_step_factor(e, [30, 50], 0.1, 10, 0.1) for e in range(1, EPOCHS + 1)]
    assert ours == pytest.approx(AUTHORS_RATES, rel=1e-12)


def test_every_epoch_of_a_run_trains_at_the_authors_rate(tmp_path):
    probe = LearningRateProbe()
    probe.train_epochs(str(tmp_path), EPOCHS)
    assert list(probe.rates) == list(range(1, EPOCHS + 1))
    assert list(probe.rates.values()) == pytest.approx(AUTHORS_RATES, rel=1e-12)
    # The paper's "multiplied with a factor of 0.1 at the 30th and 50th epoch": drops at epochs 30 and 50.
    assert probe.rates[29] == pytest.approx(10 * probe.rates[30]) == pytest.approx(100 * probe.rates[50])


@pytest.mark.parametrize("interrupted_after", [5, 29, 30, 49])
def test_a_run_resumed_mid_schedule_trains_on_at_the_authors_rates(tmp_path, capsys, interrupted_after):
    first = LearningRateProbe()
    first.train_epochs(str(tmp_path), interrupted_after)
    resumed = LearningRateProbe()
    start = resume(str(tmp_path), resumed.model, resumed)
    assert start == interrupted_after
    assert "earlier warmup_multi_step" not in capsys.readouterr().out  # our own checkpoint: nothing to say
    resumed.train_epochs(str(tmp_path), EPOCHS, start_epoch=start)
    assert list(resumed.rates) == list(range(interrupted_after + 1, EPOCHS + 1))
    assert list({**first.rates, **resumed.rates}.values()) == pytest.approx(AUTHORS_RATES, rel=1e-12)


def test_a_checkpoint_of_the_earlier_schedule_continues_on_the_authors_rates(tmp_path, capsys):
    # The earlier schedule ran epoch e at the authors' rate of epoch e - 1 (epoch 1 at 5e-7,
    # drops at epochs 31 and 51), and its factor saved no first_epoch. A run stopped after
    # epoch 7 saved the rate of its epoch 8, 5e-6 x factor(7).
    probe = LearningRateProbe()
    probe.train_epochs(str(tmp_path), 7)
    path = checkpoint_paths(str(tmp_path))["latest"]
    state = load_checkpoint(path)
    del state["scheduler"]["lr_lambdas"][0]["first_epoch"]
    earlier_rate = authors_formula(7)
    for group in state["optimizer"]["param_groups"]:
        group["lr"] = earlier_rate
    state["scheduler"]["_last_lr"] = [earlier_rate]
    atomic_save(state, path)

    resumed = LearningRateProbe()
    assert resume(str(tmp_path), resumed.model, resumed) == 7
    out = capsys.readouterr().out
    assert ("Learning rate: this checkpoint was saved under the earlier warmup_multi_step, which trained each epoch "
            "at the rate the authors' schedule gives the epoch before it (epoch 1 at 0.1x, drops one epoch late); "
            "from epoch 8 on this run follows the authors' rates (epoch 8: 4.1e-06).") in out
    resumed.train_epochs(str(tmp_path), EPOCHS, start_epoch=7)
    assert list(resumed.rates.values()) == pytest.approx(AUTHORS_RATES[7:], rel=1e-12)
    # Its next checkpoint is one of the current schedule.
    assert load_checkpoint(path)["scheduler"]["lr_lambdas"][0]["first_epoch"] == 1


def test_resuming_sets_the_rate_of_the_next_epoch_from_the_schedule_not_from_the_optimizer_state():
    probe = LearningRateProbe()
    for _ in range(8):  # epochs 1-8 trained
        probe.optimizer.step()
        probe.scheduler.step()
    saved_optimizer, saved_scheduler = probe.optimizer.state_dict(), probe.scheduler.state_dict()
    fresh = LearningRateProbe()
    fresh.optimizer.load_state_dict(saved_optimizer)
    fresh.optimizer.param_groups[0]["lr"] = 1.0  # whatever the optimizer's state says
    assert isinstance(fresh.scheduler, WarmupMultiStepLR)
    fresh.scheduler.load_state_dict(saved_scheduler)
    assert fresh.optimizer.param_groups[0]["lr"] == fresh.scheduler.get_last_lr()[0]
    assert fresh.scheduler.get_last_lr()[0] == pytest.approx(AUTHORS_RATES[8], rel=1e-12)  # epoch 9: 4.55e-6
