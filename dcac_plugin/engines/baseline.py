"""Engine ``baseline``: CLIP Re-ID model trained with L_id + L_pcl (DCAC paper, eq. 8)."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn
from torchreid import engine as reid_engine
from torchreid import metrics as reid_metrics
from tqdm import tqdm

from ..data.loaders import image_list_loader, train_items
from ..diffusion.adaptation import count_parameters
from ..models import BNNeckReID
from ..registry import ENGINES, LOSSES
from ..speed.performance import autocast, full_precision, grad_scaler, resolve_amp
from ..utils import distributed
from ..utils.rng import preserved_rng
from .common import RunRecordMixin
from .toolbox_kwargs import device_kwargs


def reid_loss(loss_id: torch.Tensor, loss_pcl: torch.Tensor, pcl_weight: float = 1.0) -> torch.Tensor:
    """Eq. 8: L_ReID = L_id + L_pcl (``pcl_weight`` 1 in the paper)."""
    return loss_id + pcl_weight * loss_pcl


@ENGINES.register("baseline")
class BaselineEngine(RunRecordMixin, reid_engine.Engine):
    """ID loss (eq. 5, label smoothing 0.1) + prototypical contrastive loss (eq. 6-7).

    The PCL memory is rebuilt from the whole training set at the start of every epoch,
    and updated after every step with the hardest sample of each identity in the batch.
    """

    model_loss = "reid"

    def __init__(self, datamanager, model: nn.Module, optimizer, scheduler=None, use_gpu: bool = True,
                 label_smooth: bool = True, pcl_temperature: float = 0.01, pcl_momentum: float = 0.2,
                 pcl_weight: float = 1.0, memory_batch_size: int = 100, memory_workers: int = 0,
                 amp: str = "off") -> None:
        super().__init__(datamanager, **device_kwargs(reid_engine.Engine.__init__, use_gpu))
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.register_model("model", model, optimizer, scheduler)
        num_classes = datamanager.num_train_pids
        self.criterion = LOSSES.get("cross_entropy")(num_classes=num_classes, use_gpu=self.use_gpu,
                                                     label_smooth=label_smooth)
        self.memory = LOSSES.get("pcl")(num_classes, model.feature_dim, pcl_temperature, pcl_momentum).to(self.device)
        self.pcl_weight = pcl_weight
        self.memory_batch_size = memory_batch_size
        self.memory_workers = memory_workers
        # train.amp auto becomes a concrete mode here, once, before the scaler depends on it.
        self.amp_setting = amp
        self.amp = resolve_amp(amp, self.device)
        self.scaler = grad_scaler(self.device, self.amp)

    @classmethod
    def from_config(cls, cfg, datamanager, model, optimizer, scheduler, use_gpu: bool, **extra):
        return cls(datamanager, model, optimizer, scheduler, use_gpu=use_gpu,
                   label_smooth=cfg.loss.softmax.label_smooth, pcl_temperature=cfg.dcac.pcl.temperature,
                   pcl_momentum=cfg.dcac.pcl.momentum, pcl_weight=cfg.dcac.pcl.weight,
                   memory_batch_size=cfg.test.batch_size, memory_workers=cfg.data.workers, amp=cfg.train.amp,
                   **extra)

    def setup_summary(self, cfg) -> List[str]:
        """What this run was built from, for the log: weights, trainable counts, precision."""
        trainable = count_parameters(self.model)["trainable"]
        source = self.model.source_line() if isinstance(self.model, BNNeckReID) else f"Re-ID model: {cfg.model.name}"
        return [source,
                f"Trainable parameters: Re-ID model {trainable:,}",
                f"Mixed precision: {self.amp} (train.amp {self.amp_setting}, {self.device.type})",
                f"Weights on: {next(self.model.parameters()).device}"]

    # ------------------------------------------------------------------ PCL memory

    @torch.no_grad()
    def extract_train_features(self) -> tuple:
        """Eval-mode BN features (L2-normalised by the model) of every training image, and their
        labels; the images resized with the training interpolation and not augmented
        (``datamanager.transform_memory``), as the reference's cluster loader does.

        Under torchrun each rank extracts its share and all ranks receive all features,
        so the memory built from them is the same everywhere.
        """
        loader = image_list_loader(distributed.shard(train_items(self.datamanager)), self.datamanager.transform_memory,
                                   self.memory_batch_size, self.memory_workers, pin_memory=self.use_gpu)
        was_training = self.model.training
        self.model.eval()
        features, labels = [], []
        for batch in tqdm(loader, desc="PCL memory", leave=False, dynamic_ncols=True,
                          disable=not distributed.is_main_process()):
            features.append(self.model(batch["img"].to(self.device)))
            labels.append(batch["pid"].to(self.device))
        self.model.train(was_training)
        return distributed.all_gather_cat(torch.cat(features)), distributed.all_gather_cat(torch.cat(labels))

    def rebuild_memory(self) -> None:
        # Every rank extracts with rank 0's BatchNorm statistics, the ones checkpoints keep.
        distributed.broadcast_buffers(self.model)
        # Not a training step: it must not move the RNG streams (exact resume).
        with preserved_rng():
            self.memory.initialize(*self.extract_train_features())
        # Every rank builds it from the same gathered features, but the class means sum with
        # index_add_, whose order on a GPU is not fixed: rank 0's memory, bit for bit, everywhere.
        distributed.broadcast_buffers(self.memory)

    def train(self, *args, **kwargs):
        self.rebuild_memory()
        result = super().train(*args, **kwargs)
        self.verify_memory_in_sync()
        return result

    def verify_memory_in_sync(self) -> None:
        """Under torchrun, check that every rank ended the epoch with the same memory.

        The memory starts each epoch as rank 0's and the updates are gathered, so this always
        holds; a difference would mean the ranks trained on different objectives, so it stops
        the run instead of going on silently.
        """
        if distributed.world_size() == 1:
            return
        memories = distributed.all_gather_cat(self.memory.prototypes.unsqueeze(0))
        differs = [r for r in range(1, memories.shape[0]) if not torch.equal(memories[r], memories[0])]
        if differs:
            raise RuntimeError(f"PCL memory of rank(s) {differs} differs from rank 0's after epoch {self.epoch + 1}.")
        print(f"PCL memory identical on all {memories.shape[0]} ranks after epoch {self.epoch + 1}")

    # ------------------------------------------------------------------- one step

    def compute_losses(self, output, pids: torch.Tensor, data: dict) -> Dict[str, torch.Tensor]:
        """The unweighted loss terms of one batch; subclasses add theirs (dcac adds L_dif).

        The Re-ID losses are computed in fp32 under mixed precision: PCL divides by tau = 0.01,
        where bf16 logits would be off by whole units.
        """
        with full_precision(self.device):
            return {"loss_id": self.criterion(output.logits.float(), pids),
                    "loss_pcl": self.memory.loss(output.f_bn.float(), pids)}

    def combine_losses(self, terms: Dict[str, torch.Tensor]) -> torch.Tensor:
        return reid_loss(terms["loss_id"], terms["loss_pcl"], self.pcl_weight)

    def forward_backward(self, data: dict) -> Dict[str, float]:
        imgs, pids = self.parse_data_for_train(data)
        imgs, pids = imgs.to(self.device), pids.to(self.device)
        with autocast(self.device, self.amp):
            output = self.train_model(imgs)
            terms = self.compute_losses(output, pids, data)
            loss = self.combine_losses(terms)
        self.check_finite(loss, {"loss": loss, **terms})
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # Eq. 7 after the loss used the old memory; under torchrun with every rank's batch,
        # so that the memories stay identical (ranks hold disjoint identities).
        self.memory.update(distributed.all_gather_cat(output.f_bn.detach().float()), distributed.all_gather_cat(pids))
        summary = {name: float(value.detach()) for name, value in terms.items()}
        summary["loss"] = float(loss.detach())
        summary["acc"] = float(reid_metrics.accuracy(output.logits.detach(), pids)[0])
        return summary

    def extra_state(self) -> dict:
        return {**super().extra_state(), "pcl_memory": self.memory.prototypes.detach().cpu().clone(),
                "grad_scaler": self.scaler.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        if "pcl_memory" in state:
            self.memory.prototypes.copy_(state["pcl_memory"])
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
