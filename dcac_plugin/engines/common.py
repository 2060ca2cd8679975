"""What every engine of ours adds to torchreid's: recorded metrics and safe checkpoints."""
from __future__ import annotations

import os.path as osp
from typing import Any, Dict

import torch

from ..checkpoint import atomic_save


class RunRecordMixin:
    """Mix in before a torchreid engine class.

    - ``results[dataset] = {'rank1', 'mAP', 'epoch'}`` after every evaluation, since
      torchreid's ``test`` returns Rank-1 of the last target only.
    - ``save_model`` writes atomically, with plain floats (torchreid stores a numpy scalar
      that ``weights_only`` loading rejects) and the engine's extra state (e.g. the PCL memory).
    """

    # What the engine asks the model to return in train mode (see ClipReID.forward).
    model_loss = "softmax"

    @property
    def results(self) -> Dict[str, Dict[str, float]]:
        return self.__dict__.setdefault("_results", {})

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if self.use_gpu else "cpu")

    def _evaluate(self, dataset_name: str = "", **kwargs):
        rank1, mAP = super()._evaluate(dataset_name=dataset_name, **kwargs)
        self.results[dataset_name] = {"rank1": float(rank1), "mAP": float(mAP), "epoch": int(self.epoch) + 1}
        return rank1, mAP

    def extra_state(self) -> Dict[str, Any]:
        """State beyond model/optimizer/scheduler that a checkpoint must keep."""
        return {}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def save_model(self, epoch: int, rank1, save_dir: str, is_best: bool = False) -> None:
        for name in self.get_model_names():
            scheduler = self._scheds[name]
            state = {
                "state_dict": self._models[name].state_dict(),
                "epoch": int(epoch) + 1,
                "rank1": float(rank1),
                "optimizer": self._optims[name].state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "engine_state": self.extra_state(),
            }
            path = atomic_save(state, osp.join(save_dir, name, f"model.pth.tar-{int(epoch) + 1}"))
            print(f"Checkpoint saved to {path}")
