"""The condition that bridges the Re-ID model and the diffusion model (DCAC paper, section 4.3).

The default, correlation-aware condition (eq. 12) mixes learnable ID prompts with the
classifier's probabilities; the ablations of Table 7 (``instance``, ``class``) and the
extra transforms of Table 10 (``silu``, ``bn``, ``mlp``) are options of one module.
Nothing is detached: the diffusion loss trains the prompts, classifier, BNNeck and ViT.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONDITION_MODES = ("correlation", "class", "instance")
CONDITION_TRANSFORMS = ("none", "silu", "bn", "mlp")


def correlation_aware_condition(logits: torch.Tensor, prompts: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 12: c = sum_j p_j e_j with p = softmax(z W^T / tau_c), i.e. softmax(logits / tau_c) @ E."""
    return F.softmax(logits / temperature, dim=1) @ prompts


def class_wise_condition(logits: torch.Tensor, prompts: torch.Tensor, labels: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """Table 7, "class-wise": only the true identity's probability is kept, c = p_y e_y."""
    p_true = F.softmax(logits / temperature, dim=1).gather(1, labels.view(-1, 1))
    return p_true * prompts[labels]


def instance_wise_condition(features: torch.Tensor, projection: nn.Module) -> torch.Tensor:
    """Table 7, "instance-wise": the instance's BN feature, linearly mapped to the prompt width."""
    return projection(features)


class ConditionNet(nn.Sequential):
    """Table 10's "ConditionNet": linear, normalisation and non-linearity mixed in an MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.SiLU(), nn.Linear(dim, dim))


def _condition_transform(name: str, dim: int) -> nn.Module:
    if name == "none":
        return nn.Identity()
    if name == "silu":
        return nn.SiLU()
    if name == "bn":
        return nn.BatchNorm1d(dim)
    if name == "mlp":
        return ConditionNet(dim)
    raise ValueError(f"Unknown condition transform {name!r}; use one of {', '.join(CONDITION_TRANSFORMS)}")


class CorrelationAwareCondition(nn.Module):
    """Learnable ID prompts E (N x D, init N(0, 1)) and the condition built from them.

    ``forward`` returns ONE cross-attention token per image, shape [B, 1, D] (D = the
    U-Net's cross-attention width, 768 for Stable Diffusion v1.5).
    """

    def __init__(self, num_classes: int, feature_dim: int, prompt_dim: int = 768, mode: str = "correlation",
                 transform: str = "none", temperature: float = 1.0) -> None:
        super().__init__()
        if mode not in CONDITION_MODES:
            raise ValueError(f"Unknown condition mode {mode!r}; use one of {', '.join(CONDITION_MODES)}")
        if temperature <= 0:
            raise ValueError(f"Condition temperature tau_c must be positive, got {temperature}")
        self.mode = mode
        self.temperature = float(temperature)
        if mode == "instance":
            self.projection = nn.Linear(feature_dim, prompt_dim)
        else:
            self.prompts = nn.Parameter(torch.randn(num_classes, prompt_dim))
        self.transform = _condition_transform(transform, prompt_dim)

    def forward(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.mode == "correlation":
            condition = correlation_aware_condition(logits, self.prompts, self.temperature)
        elif self.mode == "class":
            condition = class_wise_condition(logits, self.prompts, labels, self.temperature)
        else:
            condition = instance_wise_condition(features, self.projection)
        return self.transform(condition).unsqueeze(1)
