"""What every engine of ours adds to torchreid's: recorded metrics, safe and complete
checkpoints (``latest`` every epoch, ``best`` on evaluation, exact resume), torchrun,
and a stop on a non-finite loss."""
from __future__ import annotations

import os.path as osp
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F

from dcac_config.errors import UserError
from dcac_config.run_folder.save_dir import checkpoint_paths

from ..evaluation import evaluate_features, mean_over_splits, torchreid_ranking_note
from ..utils import distributed
from ..utils.checkpoint import atomic_copy, atomic_save
from ..utils.rng import capture_rng_state, preserved_rng, restore_rank_rng_state


class NonFiniteLossError(UserError, FloatingPointError):
    """Training stopped on a NaN or infinite loss; nothing was written for the broken step."""


class _NullWriter:
    """Stands in for TensorBoard's SummaryWriter on ranks other than 0 (one event log per run)."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


class RunRecordMixin:
    """Mix in before a torchreid engine class.

    - ``results[dataset] = {'rank1', 'mAP', 'mINP', 'epoch'}`` after every evaluation; for a
      dataset evaluated on several random splits, their means and ``split_ids``, ``splits``.
    - Checkpoints (rank 0 only, written atomically, tensors and plain types only): after
      every epoch ``<save_dir>/model/latest.pth.tar``; after every evaluation torchreid's
      ``model.pth.tar-<epoch>`` and, when Rank-1 improved, ``best.pth.tar``. Each holds the
      model, optimizer, scheduler, the engine's extra state (PCL memory, diffusion
      adapters, loss scaler, sampler), the RNG states of every rank, and the results.
    - Under torchrun: rank 0 evaluates and writes while the others wait; training steps
      go through DistributedDataParallel (:meth:`setup_distributed`).
    - Evaluation and other passes outside the training steps leave the RNG streams as
      they were, so a resumed run draws what the uninterrupted one drew.
    """

    # What the engine asks the model to return in train mode (see ClipReID.forward).
    model_loss = "softmax"

    @property
    def results(self) -> Dict[str, Dict[str, float]]:
        return self.__dict__.setdefault("_results", {})

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.use_gpu else torch.device("cpu")

    @property
    def train_model(self) -> torch.nn.Module:
        """The model the training step calls: DDP-wrapped under torchrun, else the model itself."""
        wrapped = self.__dict__.get("_train_model")
        return wrapped if wrapped is not None else self.model

    def setup_distributed(self) -> None:
        """Wrap what the training step calls in DDP (a no-op in a single process)."""
        self._train_model = distributed.wrap_ddp(self.model, self.use_gpu)

    # ------------------------------------------------------------------ the loop

    def run(self, save_dir: str = "log", **kwargs):
        self.save_dir = save_dir
        if not distributed.is_main_process():
            self.writer = _NullWriter()
        return super().run(save_dir=save_dir, **kwargs)

    def train(self, *args, **kwargs):
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        result = super().train(*args, **kwargs)
        if getattr(self, "save_dir", None):
            self.write_checkpoints(self.epoch, self.__dict__.get("_last_rank1", 0.0), self.save_dir, numbered=False)
        return result

    def test(self, *args, **kwargs):
        """torchreid's test on rank 0 (the others wait), leaving the RNG streams untouched."""
        rank1 = 0.0
        # torchreid's test logs Test/<dataset>/{rank1,mAP} at the 0-based epoch; our _record logs
        # them (and mINP) at the 1-based epoch of the checkpoints: hide the writer from torchreid.
        self._metrics_writer, self.writer = self.writer, None
        try:
            with preserved_rng():
                if distributed.is_main_process():
                    rank1 = self.record_split_means(super().test(*args, **kwargs))
        finally:
            self.writer = self._metrics_writer
        distributed.barrier()
        return rank1

    @property
    def split_keys(self) -> Dict[str, Tuple[str, int]]:
        """``{test-loader key: (dataset, split id)}`` of the random-split targets
        (:func:`~dcac_plugin.data.random_splits.expand_split_targets`)."""
        return getattr(self.datamanager, "split_keys", None) or {}

    def record_split_means(self, last_rank1: float) -> float:
        """After an evaluation: each random-split dataset's mean over its splits (and every
        split's figures) recorded under its name. Returns the Rank-1 torchreid's loop keeps
        (for ``best``): that of the last target evaluated, its mean for a random-split one."""
        for dataset, per_split in self.__dict__.pop("_split_results", {}).items():
            summary = mean_over_splits(per_split)
            self._store(dataset, summary)
            print(f"** {dataset}: mean over its {len(per_split)} splits ** mAP: {summary['mAP']:.1%}, "
                  f"Rank-1: {summary['rank1']:.1%}")
        keys = list(self.test_loader)
        last = self.split_keys.get(keys[-1]) if keys else None
        return self.results[last[0]]["rank1"] if last else last_rank1

    def check_finite(self, loss: torch.Tensor, terms: Dict[str, Any]) -> None:
        """Stop (on every rank) before a NaN or infinite loss reaches the weights."""
        finite = bool(torch.isfinite(loss.detach()).all())
        if distributed.all_ranks_true(finite, self.device):
            return
        values = ", ".join(f"{k}={float(v.detach() if torch.is_tensor(v) else v):.6g}" for k, v in terms.items())
        last = checkpoint_paths(getattr(self, "save_dir", "") or ".")["latest"]
        raise NonFiniteLossError(
            f"Non-finite loss at epoch {self.epoch + 1}, step {getattr(self, 'batch_idx', 0) + 1}: {values}. "
            "Training stopped before this step changed anything on disk"
            f"{'; the last good checkpoint is ' + last if osp.isfile(last) else ''}. Common fixes: a lower "
            "train.lr, train.amp bf16 or off instead of fp16, or checking the data.")

    # ----------------------------------------------------------------- evaluation

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
            note = torchreid_ranking_note()
            if note:
                print(note)
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
        for r in (r for r in ranks if r <= len(result.cmc)):  # a gallery smaller than a rank has no such rank
            print(f"Rank-{r:<3}: {result.cmc[r - 1]:.1%}")
        return self._record(dataset_name, float(result.cmc[0]), float(result.mAP), mINP=float(result.mINP))

    def _record(self, dataset_name: str, rank1: float, mAP: float, **extra: float) -> tuple:
        metrics = {"rank1": rank1, "mAP": mAP, **extra}
        split = self.split_keys.get(dataset_name)
        if split is not None:
            # One split of a random-split dataset: its mean is recorded once all are in (record_split_means).
            self.__dict__.setdefault("_split_results", {}).setdefault(split[0], {})[split[1]] = metrics
        else:
            self._store(dataset_name, metrics)
        return rank1, mAP

    def _store(self, dataset_name: str, metrics: Dict[str, Any]) -> None:
        """``results[dataset_name]`` at this epoch, its numbers logged as ``Test/<dataset>/<metric>``."""
        epoch = int(self.epoch) + 1
        self.results[dataset_name] = {**metrics, "epoch": epoch}
        # Beside torchreid's Train/* scalars (every loss term, lr), so curves need only the event file.
        writer = self.__dict__.get("_metrics_writer")
        if writer is not None:
            for name, value in metrics.items():
                if isinstance(value, float):
                    writer.add_scalar(f"Test/{dataset_name}/{name}", value, epoch)

    # ---------------------------------------------------------------- checkpoints

    def extra_state(self) -> Dict[str, Any]:
        """State beyond model/optimizer/scheduler that a checkpoint must keep."""
        sampler = getattr(self.train_loader, "sampler", None)
        return {"sampler": sampler.state_dict()} if hasattr(sampler, "state_dict") else {}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""
        sampler = getattr(self.train_loader, "sampler", None)
        if "sampler" in state and hasattr(sampler, "load_state_dict"):
            sampler.load_state_dict(state["sampler"])

    def checkpoint_state(self, name: str, epoch: int, rank1: float) -> Dict[str, Any]:
        """Everything an exact resume needs. Collective under torchrun (RNG states are gathered)."""
        scheduler = self._scheds[name]
        return {
            "state_dict": self._models[name].state_dict(),
            "epoch": int(epoch) + 1,
            "rank1": float(rank1),
            "best_rank1": float(self.__dict__.get("_best_rank1", -1.0)),
            "optimizer": self._optims[name].state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "engine_state": self.extra_state(),
            "rng": distributed.all_gather_objects(capture_rng_state()),
            "results": {k: dict(v) for k, v in self.results.items()},
        }

    def write_checkpoints(self, epoch: int, rank1: float, save_dir: str, numbered: bool = True,
                          is_best: bool = False) -> None:
        """``latest`` always, torchreid's numbered file when asked, ``best`` when ``is_best`` (rank 0 writes)."""
        for name in self.get_model_names():
            state = self.checkpoint_state(name, epoch, rank1)
            if not distributed.is_main_process():
                continue
            paths = checkpoint_paths(save_dir, name)
            targets = [paths["latest"]]
            if numbered:
                targets.append(osp.join(save_dir, name, f"model.pth.tar-{int(epoch) + 1}"))
            if is_best:
                targets.append(paths["best"])
            # Serialised once; the other names get copies of the file.
            atomic_save(state, targets[0])
            for path in targets[1:]:
                atomic_copy(targets[0], path)
            print(f"Checkpoint saved: {', '.join(targets)}")

    def save_model(self, epoch: int, rank1, save_dir: str, is_best: bool = False) -> None:
        """Called by torchreid's loop after each evaluation.

        ``latest`` is written again (after the one at the end of the epoch) on purpose: it then
        carries this evaluation's results and best Rank-1, so a resumed run keeps ``best`` right.
        """
        self._last_rank1 = float(rank1)
        improved = float(rank1) > self.__dict__.get("_best_rank1", -1.0)
        if improved:
            self._best_rank1 = float(rank1)
        self.write_checkpoints(epoch, rank1, save_dir, numbered=True, is_best=improved or is_best)

    def load_training_state(self, state: Dict[str, Any]) -> None:
        """Everything :meth:`checkpoint_state` saved beyond the weights, for ``model.resume``."""
        for name in self.get_model_names():
            if state.get("optimizer") is not None:
                self._optims[name].load_state_dict(state["optimizer"])
            if self._scheds[name] is not None and state.get("scheduler") is not None:
                self._scheds[name].load_state_dict(state["scheduler"])
        self.load_extra_state(state.get("engine_state") or {})
        self._best_rank1 = float(state.get("best_rank1", -1.0))
        self._last_rank1 = float(state.get("rank1", 0.0))
        self.results.update(state.get("results") or {})
        for note in restore_rank_rng_state(state.get("rng") or [], distributed.rank(), distributed.world_size()):
            print(note)
