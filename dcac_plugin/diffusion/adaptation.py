"""What of the U-Net trains: the fine-tuning variants of the DCAC paper (Tables 5 and 6).

LoRA (paper eq. 9) comes from peft through diffusers' ``add_adapter``; the partial and
full variants only switch ``requires_grad``. Checkpoint helpers save and restore just the
trainable part, so a DCAC checkpoint never carries the frozen 3.4 GB U-Net.
"""
from __future__ import annotations

from typing import Dict, Mapping, Set, Tuple

import torch
from peft import LoraConfig
from torch import nn

FINETUNE_MODES: Tuple[str, ...] = ("frozen", "lora", "partial1", "partial2", "full", "scratch")

# Matched with re.fullmatch against module names by peft: in every transformer block of the
# U-Net, self- (attn1) and cross-attention (attn2) q/k/v/out and the GEGLU input projection.
# ff.net.2, proj_in/proj_out, ResNet blocks and the time embedding stay un-adapted (paper 4.2).
LORA_TARGET_MODULES: str = r".*\.transformer_blocks\.\d+\.(?:attn[12]\.(?:to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj)"

# U-Net children trained by partial fine-tuning 1 (output side) and 2 (plus the middle block).
_PARTIAL1_CHILDREN = ("up_blocks", "conv_norm_out", "conv_out", "time_embedding")
_PARTIAL2_CHILDREN = _PARTIAL1_CHILDREN + ("mid_block",)


def lora_config(rank: int, alpha: float = 1.0) -> LoraConfig:
    """peft LoRA settings of DCAC eq. 9: h' = hW + (alpha / r) hAB, with alpha = 1 -> scale 1/r.

    ``init_lora_weights=True`` draws A kaiming-uniform and sets B to zero, so a fresh
    adapter leaves the pretrained U-Net's output unchanged; ``bias="none"`` adds no bias.
    """
    return LoraConfig(
        r=rank, lora_alpha=alpha, init_lora_weights=True, target_modules=LORA_TARGET_MODULES, bias="none"
    )


def _unfreeze_children(unet: nn.Module, names: Tuple[str, ...]) -> None:
    """Make the named direct children of the U-Net trainable."""
    for name in names:
        getattr(unet, name).requires_grad_(True)


def apply_finetune_mode(unet: nn.Module, mode: str, rank: int = 8, alpha: float = 1.0) -> nn.Module:
    """Set which U-Net parameters train, per DCAC's fine-tuning variants (paper Tables 5/6).

    ``frozen``: none (the gradient still flows through the U-Net to the condition);
    ``lora``: only peft LoRA adapters of rank ``rank`` on :data:`LORA_TARGET_MODULES`;
    ``partial1``: up blocks, output norm and conv, time embedding; ``partial2``: partial1
    plus the middle block; ``full`` and ``scratch``: the whole U-Net (``scratch`` expects
    a randomly initialised U-Net, see ``load_diffusion_components(random_unet=True)``).
    Returns the U-Net, adapted in place.
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"Unknown fine-tuning mode {mode!r}; valid modes: {', '.join(FINETUNE_MODES)}.")
    unet.requires_grad_(False)
    if mode == "lora":
        unet.add_adapter(lora_config(rank, alpha))
    elif mode == "partial1":
        _unfreeze_children(unet, _PARTIAL1_CHILDREN)
    elif mode == "partial2":
        _unfreeze_children(unet, _PARTIAL2_CHILDREN)
    elif mode in ("full", "scratch"):
        unet.requires_grad_(True)
    return unet


def _trainable_keys(module: nn.Module) -> Set[str]:
    """State-dict keys of trainable parameters and of the persistent buffers next to them."""
    keys = set()
    for prefix, submodule in module.named_modules():
        own_params = list(submodule.named_parameters(recurse=False))
        if not any(param.requires_grad for _, param in own_params):
            continue
        dot = f"{prefix}." if prefix else ""
        keys.update(dot + name for name, param in own_params if param.requires_grad)
        keys.update(
            dot + name
            for name, _ in submodule.named_buffers(recurse=False)
            if name not in submodule._non_persistent_buffers_set
        )
    return keys


def trainable_state_dict(module: nn.Module) -> Dict[str, torch.Tensor]:
    """The part of ``module``'s state dict that training changes (see :func:`_trainable_keys`)."""
    keys = _trainable_keys(module)
    return {key: value for key, value in module.state_dict().items() if key in keys}


def load_trainable_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Restore what :func:`trainable_state_dict` saved; ValueError on missing or unexpected keys.

    ``module`` must already be set up the same way (same fine-tuning mode and rank).
    """
    expected = _trainable_keys(module)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            "Trainable state does not match the module (same fine-tuning mode and LoRA rank?): "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}."
        )
    module.load_state_dict(dict(state), strict=False)


def count_parameters(module: nn.Module) -> Dict[str, int]:
    """``{'total', 'trainable'}`` parameter counts (works on meta-device modules)."""
    params = list(module.parameters())
    return {
        "total": sum(param.numel() for param in params),
        "trainable": sum(param.numel() for param in params if param.requires_grad),
    }
