"""The condition that bridges the Re-ID model and the diffusion model (DCAC paper, section 4.3).

The default, correlation-aware condition (eq. 12) mixes learnable ID prompts with the
classifier's probabilities; the ablations of Table 7 (``instance``, ``class``) and the
extra transforms of Table 10 (``silu``, ``bn``, ``mlp``) are options of one module. The
ablations follow the authors' code, which produced the paper's tables; ``class_weighted``
keeps the paper's literal wording of the class-wise condition for comparison.

Nothing is detached. Through the correlation-aware, instance-wise and ``class_weighted``
conditions the diffusion loss trains the prompts, classifier, BNNeck and ViT; the
class-wise condition (``class``) carries no gradient back to the Re-ID model, because the
authors' computation of it does not either (see ``class_wise_condition``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONDITION_MODES = ("correlation", "class", "class_weighted", "instance")
CONDITION_TRANSFORMS = ("none", "silu", "bn", "mlp")


def correlation_aware_condition(logits: torch.Tensor, prompts: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 12: c = sum_j p_j e_j with p = softmax(z W^T / tau_c), i.e. softmax(logits / tau_c) @ E."""
    return F.softmax(logits / temperature, dim=1) @ prompts


def class_wise_condition(prompts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Table 7, "Class-wise", as the authors computed it: c = (p_y e_y) / p_y = e_y.

    The authors' code keeps the true identity's term p_y e_y of eq. 12 and divides it by
    p_y again ("rescale hard label weight to 1"), p = softmax(logits / tau_c). In value
    that is the true identity's prompt e_y, and the derivative of (p_y e_y) / p_y with
    respect to p_y is e_y / p_y - e_y / p_y = 0: the diffusion loss reaches only the
    prompts, never the classifier, BNNeck or ViT. Indexing the prompts gives that value
    and exactly that (zero) gradient, without the rounding of a division by a small p_y
    (or its 0 / 0 once p_y underflows). The paper's text reads the condition as p_y e_y:
    see ``class_weighted_condition``.
    """
    return prompts[labels]


def class_weighted_condition(logits: torch.Tensor, prompts: torch.Tensor, labels: torch.Tensor,
                             temperature: float) -> torch.Tensor:
    """Table 7's "Class-wise" as the paper's text words it: eq. 12 with the one-hot selection of
    the true identity, c = p_y e_y, p = softmax(logits / tau_c).

    This is the paper's text, not what produced Table 7 (that is ``class_wise_condition``);
    unlike it, the gradient reaches the Re-ID model through p_y.
    """
    p_true = F.softmax(logits / temperature, dim=1).gather(1, labels.view(-1, 1))
    return p_true * prompts[labels]


def instance_wise_condition(features: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Table 7, "Instance-wise", as the authors computed it: c = normalize(f_bn) @ W.

    f_bn is the train-mode BN feature ([B, feature_dim]), L2-normalised over the feature
    dimension; W ([feature_dim, prompt_dim], no bias) is the authors' prompt table with one
    row per feature dimension in place of one per identity, so the condition is eq. 12's
    linear combination with the normalised feature as the weights.
    """
    return F.normalize(features, dim=1) @ prompts


class ConditionNet(nn.Sequential):
    """Table 10's "+ ConditionNet", as the authors built it: BatchNorm1d(D), SiLU,
    Linear(D -> D/8, no bias), BatchNorm1d(D/8), SiLU, Linear(D/8 -> D, no bias).

    Linear weights are initialised N(0, 1) (the std of the ID prompts), BatchNorm weight 1
    and bias 0. D = 768 for Stable Diffusion v1.5, so the bottleneck is 96 wide.
    """

    def __init__(self, dim: int) -> None:
        hidden = dim // 8
        if hidden < 1:
            raise ValueError(f"ConditionNet needs a condition width of at least 8, got {dim}")
        super().__init__(nn.BatchNorm1d(dim), nn.SiLU(), nn.Linear(dim, hidden, bias=False),
                         nn.BatchNorm1d(hidden), nn.SiLU(), nn.Linear(hidden, dim, bias=False))
        for module in self:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=1.0)
            elif isinstance(module, nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def _condition_transform(name: str, dim: int) -> nn.Module:
    """Table 10's options on c: "+ Non-linearity" (SiLU), "+ BatchNorm", "+ ConditionNet"."""
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
    """Learnable prompts E (init N(0, 1)) and the condition built from them.

    E has one row per identity (N x D) in the ``correlation``, ``class`` and
    ``class_weighted`` modes, and one row per Re-ID feature dimension (feature_dim x D,
    the matrix W) in the ``instance`` mode. ``forward`` returns ONE cross-attention token
    per image, shape [B, 1, D] (D = the U-Net's cross-attention width, 768 for Stable
    Diffusion v1.5).
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
        rows = feature_dim if mode == "instance" else num_classes
        self.prompts = nn.Parameter(torch.randn(rows, prompt_dim))
        self.transform = _condition_transform(transform, prompt_dim)

    def forward(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``logits`` and ``features`` (the train-mode BN feature f_bn) of the Re-ID model for
        the batch, ``labels`` its identities; returns the condition c, [B, 1, D]."""
        if self.mode == "correlation":
            condition = correlation_aware_condition(logits, self.prompts, self.temperature)
        elif self.mode == "class":
            condition = class_wise_condition(self.prompts, labels)
        elif self.mode == "class_weighted":
            condition = class_weighted_condition(logits, self.prompts, labels, self.temperature)
        else:
            condition = instance_wise_condition(features, self.prompts)
        return self.transform(condition).unsqueeze(1)
