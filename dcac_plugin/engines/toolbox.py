"""torchreid's own engines (softmax, triplet), registered so that configs can name them."""
from __future__ import annotations

import torch
from torchreid import engine as reid_engine

from ..registry import ENGINES
from ..utils import distributed
from ..utils.swap import swapped
from .common import RunRecordMixin
from .toolbox_kwargs import device_kwargs


class ToolboxStepMixin:
    """torchreid's training step, through DDP under torchrun, stopped on a non-finite loss."""

    def setup_distributed(self) -> None:
        # torchreid's triplet engine skips the classifier when loss.triplet.weight_x is 0: DDP
        # must then be told that some parameters may get no gradient.
        self._train_model = distributed.wrap_ddp(self.model, self.use_gpu, find_unused_parameters=True)

    def forward_backward(self, data):
        with swapped(self, "model", self.train_model):
            summary = super().forward_backward(data)
        # softmax reports `loss`, triplet `loss_t` and `loss_x`: check every loss term.
        terms = {k: v for k, v in summary.items() if k.startswith("loss")}
        self.check_finite(torch.tensor([float(v) for v in terms.values()]), summary)
        return summary


@ENGINES.register("softmax")
class SoftmaxEngine(ToolboxStepMixin, RunRecordMixin, reid_engine.ImageSoftmaxEngine):
    """torchreid's ImageSoftmaxEngine: ID loss (label-smoothed cross-entropy)."""

    model_loss = "softmax"

    @classmethod
    def from_config(cls, cfg, datamanager, model, optimizer, scheduler, use_gpu: bool):
        return cls(datamanager, model, optimizer=optimizer, scheduler=scheduler,
                   label_smooth=cfg.loss.softmax.label_smooth,
                   **device_kwargs(reid_engine.ImageSoftmaxEngine.__init__, use_gpu))


@ENGINES.register("triplet")
class TripletEngine(ToolboxStepMixin, RunRecordMixin, reid_engine.ImageTripletEngine):
    """torchreid's ImageTripletEngine: hard-mined triplet loss (+ weighted ID loss)."""

    model_loss = "triplet"

    @classmethod
    def from_config(cls, cfg, datamanager, model, optimizer, scheduler, use_gpu: bool):
        return cls(datamanager, model, optimizer=optimizer, scheduler=scheduler,
                   margin=cfg.loss.triplet.margin, weight_t=cfg.loss.triplet.weight_t,
                   weight_x=cfg.loss.triplet.weight_x, label_smooth=cfg.loss.softmax.label_smooth,
                   **device_kwargs(reid_engine.ImageTripletEngine.__init__, use_gpu))
