"""Speed and memory options: mixed precision, gradient checkpointing, torch.compile, and the
U-Net's faster kernels (matrix-product convolutions on the CPU, fused LoRA updates).

None changes the maths; each only trades numerical precision (amp) or time (checkpointing)
or compilation time (compile) for speed or memory. Attention already runs through PyTorch's
scaled_dot_product_attention: diffusers' default attention processor on torch 2 calls it,
and open_clip's blocks call nn.MultiheadAttention with need_weights=False, which does too.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Optional, Tuple

import torch
from torch import nn

AMP_MODES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# What train.amp accepts: a mode, or ``auto`` (resolved to a mode per device by resolve_amp).
AMP_CHOICES = ("auto", *AMP_MODES)


def resolve_amp(mode: str, device: torch.device) -> str:
    """The mixed-precision mode a run uses on ``device``: ``mode`` itself, or for ``auto`` fp16
    (with a gradient scaler) on every CUDA GPU and off elsewhere.

    ``auto`` is the paper recipe's setting and follows the authors, who trained with fp16
    autocast and a gradient scaler (on an A6000, which has bf16): the same on a GPU with bf16.
    bf16 is a choice (``train.amp bf16``), not the paper's numerics: its 8-bit mantissa moves
    the condition's softmax(logits / tau_c) several times further from fp32 than fp16 does.
    Most CPUs have no fast half-precision units, so there autocast would only cost precision:
    the CPU trains in fp32.
    """
    if mode not in AMP_CHOICES:
        raise ValueError(f"Unknown train.amp {mode!r}; use one of {', '.join(AMP_CHOICES)}")
    if mode != "auto":
        return mode
    return "fp16" if device.type == "cuda" else "off"


def amp_dtype(mode: str) -> Optional[torch.dtype]:
    """The autocast dtype of a resolved mode (``auto`` goes through :func:`resolve_amp` first)."""
    try:
        return AMP_MODES[mode]
    except KeyError:
        raise ValueError(f"Unknown train.amp {mode!r}; use one of {', '.join(AMP_MODES)}") from None


def autocast(device: torch.device, mode: str):
    """``torch.autocast`` for ``train.amp`` (a no-op context when off)."""
    dtype = amp_dtype(mode)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def full_precision(device: torch.device):
    """A region where autocast is off: losses with small temperatures need fp32 logits."""
    return torch.autocast(device_type=device.type, enabled=False)


def grad_scaler(device: torch.device, mode: str) -> torch.amp.GradScaler:
    """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not (disabled scaler)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(mode) == torch.float16)


def enable_gradient_checkpointing(modules: Iterable[nn.Module]) -> int:
    """Recompute activations in the backward pass of the ViT blocks and U-Net blocks; returns how many
    modules were switched."""
    switched = 0
    for module in modules:
        for sub in module.modules():
            if hasattr(sub, "set_grad_checkpointing") and hasattr(sub, "transformer"):  # open_clip tower
                sub.set_grad_checkpointing(True)
                switched += 1
            elif hasattr(sub, "enable_gradient_checkpointing") and getattr(sub, "_supports_gradient_checkpointing",
                                                                             False):  # diffusers model
                sub.enable_gradient_checkpointing()
                switched += 1
    return switched


def compile_modules(modules: Iterable[nn.Module], backend: str = "inductor") -> None:
    """``nn.Module.compile`` in place: parameters and state-dict keys are unchanged."""
    for module in modules:
        module.compile(backend=backend)


def use_faster_unet_kernels(cfg, unet: nn.Module, device_type: str) -> Tuple[int, int]:
    """train.cpu_matmul_convolutions (on the CPU only) and train.fused_lora (on any real
    device) on ``unet``, in place; returns (convolutions swapped, LoRA layers fused).

    Neither applies on ``meta``: the FLOP counts and GPU memory plans built there follow what
    a GPU runs, with peft's LoRA modules (its FLOPs are counted per ``lora_A`` / ``lora_B``).
    """
    from .cpu_convolution import use_matrix_product_convolutions

    convolutions = fused = 0
    if cfg.train.cpu_matmul_convolutions and device_type == "cpu":
        convolutions = use_matrix_product_convolutions(unet)
    if cfg.train.fused_lora and device_type != "meta":
        from .fused_lora import use_fused_lora  # peft, imported with the diffusion model

        fused = use_fused_lora(unet)
    return convolutions, fused
