"""What every engine of ours adds to torchreid's: recorded metrics and safe checkpoints."""
from __future__ import annotations

import os.path as osp
from typing import Any, Dict

import torch
import torch.nn.functional as F

from ..checkpoint import atomic_save
from ..evaluation import evaluate_features


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

    @torch.no_grad()
    def extract_split(self, loader) -> tuple:
        """Features, pids and camids of one query or gallery loader, in loader order."""
        features, pids, camids = [], [], []
        for data in loader:
            imgs, batch_pids, batch_camids = self.parse_data_for_eval(data)
            features.append(self.extract_features(imgs.to(self.device)).float())
            pids.append(batch_pids)
            camids.append(batch_camids)
        return torch.cat(features), torch.cat(pids), torch.cat(camids)

    def _evaluate(self, dataset_name: str = "", query_loader=None, gallery_loader=None, dist_metric="euclidean",
                  normalize_feature=False, ranks=(1, 5, 10, 20), rerank=False, visrank=False,
                  use_metric_cuhk03=False, **kwargs):
        """Our exact, chunked ranking metrics (never the whole distance matrix), mINP included.

        Re-ranking and ranked-result pictures need the whole matrix: those go through
        torchreid's own pipeline.
        """
        if rerank or visrank:
            rank1, mAP = super()._evaluate(dataset_name=dataset_name, query_loader=query_loader,
                                           gallery_loader=gallery_loader, dist_metric=dist_metric,
                                           normalize_feature=normalize_feature, ranks=ranks, rerank=rerank,
                                           visrank=visrank, use_metric_cuhk03=use_metric_cuhk03, **kwargs)
            return self._record(dataset_name, float(rank1), float(mAP))
        print("Extracting features from query and gallery sets ...")
        qf, q_pids, q_camids = self.extract_split(query_loader)
        gf, g_pids, g_camids = self.extract_split(gallery_loader)
        if normalize_feature:
            qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
        print(f"Ranking {qf.shape[0]} queries against {gf.shape[0]} gallery images ({dist_metric}) ...")
        result = evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=dist_metric,
                                   use_metric_cuhk03=use_metric_cuhk03)
        print("** Results **")
        print(f"mAP: {result.mAP:.1%}\nmINP: {result.mINP:.1%}\nCMC curve")
        for r in ranks:
            print(f"Rank-{r:<3}: {result.cmc[r - 1]:.1%}")
        return self._record(dataset_name, float(result.cmc[0]), float(result.mAP), mINP=float(result.mINP))

    def _record(self, dataset_name: str, rank1: float, mAP: float, **extra: float) -> tuple:
        self.results[dataset_name] = {"rank1": rank1, "mAP": mAP, **extra, "epoch": int(self.epoch) + 1}
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
