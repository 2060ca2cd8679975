"""The Re-ID head of the paper's recipe, shared by every model the ``baseline`` and ``dcac``
engines train: backbone feature z -> BNNeck -> f_bn -> bias-free ID classifier (DCAC paper,
section 4.1; BNNeck after Luo et al. 2019)."""
from __future__ import annotations

from typing import NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import nn


class ReIDOutput(NamedTuple):
    """Train-mode output for the DCAC engines: classifier logits, feature z, BN feature."""

    logits: torch.Tensor
    z: torch.Tensor
    f_bn: torch.Tensor


def freeze_as_buffer(module: nn.Module, name: str) -> None:
    """Turn parameter ``name`` of ``module`` into a buffer with the same state-dict key.

    torchreid's engine calls ``open_all_layers`` every epoch, which sets
    ``requires_grad=True`` on every parameter; a buffer stays frozen whatever any
    engine does, and checkpoints keep their keys.
    """
    value = getattr(module, name).detach().clone()
    delattr(module, name)
    module.register_buffer(name, value)


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d whose bias is fixed at 0 (BNNeck, Luo et al. 2019): weight 1, bias 0 at start."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        freeze_as_buffer(self, "bias")


class BNNeckReID(nn.Module):
    """``backbone`` (returning the feature z) + BNNeck + bias-free ID classifier.

    Train mode returns what the engine asks for through ``loss``: ``softmax`` -> logits
    (torchreid's softmax engine), ``triplet`` -> (logits, z) (torchreid's triplet engine),
    anything else -> :class:`ReIDOutput` (our engines). Eval mode returns the L2-normalised
    BN feature. State-dict keys: ``backbone.*``, ``bnneck.*``, ``classifier.weight``.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, loss: str = "softmax") -> None:
        super().__init__()
        self.backbone = backbone
        self.loss = loss
        self.feature_dim = int(feature_dim)
        self.bnneck = BNNeck(self.feature_dim)
        self.classifier = nn.Linear(self.feature_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    # What the backbone was initialised from, for the run log (set by the builders).
    weights_source = "not recorded"

    def source_line(self) -> str:
        """One line for the run log: which network, initialised from what."""
        return f"Re-ID model: {type(self.backbone).__name__}, {self.weights_source}"

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, tuple, ReIDOutput]:
        z = self.backbone(x)  # the backbone's feature [B, feature_dim], in the current mode
        f_bn = self.bnneck(z)
        if not self.training:
            return F.normalize(f_bn, dim=1)
        logits = self.classifier(f_bn)
        if self.loss == "softmax":
            return logits
        if self.loss == "triplet":
            return logits, z
        return ReIDOutput(logits, z, f_bn)
