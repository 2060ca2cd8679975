"""Prototypical contrastive loss and its memory (DCAC paper, eq. 6-7)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn


def class_mean_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Memory initialisation of section 4.1: per identity, the mean of its L2-normalised
    features, re-normalised. Identities without any feature get a zero row."""
    features = F.normalize(features.float(), dim=1)
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    return F.normalize(sums, dim=1)


def prototypical_contrastive_loss(
    features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Eq. 6: cross-entropy of normalize(f) @ M^T / tau against the true identity (no smoothing)."""
    logits = F.normalize(features, dim=1) @ prototypes.to(features.dtype).t() / temperature
    return F.cross_entropy(logits, labels)


def hardest_samples(
    features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """z_hard of eq. 7: for each identity in the batch, its L2-normalised feature with the
    LOWEST cosine similarity to the identity's current prototype.

    Returns (identities, their hardest normalised features), identities sorted ascending.
    """
    normalised = F.normalize(features.detach().float(), dim=1)
    cosine = (normalised * prototypes[labels].float()).sum(dim=1)
    identities = torch.unique(labels)
    # Per identity, the argmin of cosine: mask other identities with +inf.
    same = labels.unsqueeze(0) == identities.unsqueeze(1)  # [I, B]
    masked = torch.where(same, cosine.unsqueeze(0), torch.full_like(cosine, float("inf")).unsqueeze(0))
    return identities, normalised[masked.argmin(dim=1)]


def momentum_update(prototypes: torch.Tensor, identities: torch.Tensor, z_hard: torch.Tensor,
                    momentum: float) -> torch.Tensor:
    """Eq. 7: M[y] <- gamma * M[y] + (1 - gamma) * z_hard, then M[y] re-normalised.

    gamma = 0.2 keeps only 20 % of the old prototype. Returns the updated memory (in place).
    """
    mixed = momentum * prototypes[identities] + (1.0 - momentum) * z_hard.to(prototypes.dtype)
    prototypes[identities] = F.normalize(mixed, dim=1)
    return prototypes


class PrototypeMemory(nn.Module):
    """The prototypical memory bank M (N x d) of eq. 6-7.

    Held as a buffer so that it moves with ``.to()`` and lands in ``state_dict`` (and so in
    checkpoints, for an exact resume).
    """

    def __init__(self, num_classes: int, feature_dim: int, temperature: float = 0.01, momentum: float = 0.2) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"PCL momentum must lie in [0, 1], got {momentum}")
        if temperature <= 0:
            raise ValueError(f"PCL temperature must be positive, got {temperature}")
        self.num_classes = num_classes
        self.temperature = temperature
        self.momentum = momentum
        self.register_buffer("prototypes", torch.zeros(num_classes, feature_dim))

    @torch.no_grad()
    def initialize(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Rebuild M from features of the whole training set (start of each epoch)."""
        labels = labels.to(features.device).long()
        if int(labels.max()) >= self.num_classes or int(labels.min()) < 0:
            raise ValueError(f"Labels must lie in [0, {self.num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
        self.prototypes.copy_(class_mean_prototypes(features, labels, self.num_classes).to(self.prototypes))

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return prototypical_contrastive_loss(features, self.prototypes, labels, self.temperature)

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Eq. 7 after a step, with detached features and the memory the loss used."""
        identities, z_hard = hardest_samples(features, self.prototypes, labels)
        momentum_update(self.prototypes, identities, z_hard, self.momentum)
