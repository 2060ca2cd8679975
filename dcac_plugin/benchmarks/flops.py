"""FLOPs of the training steps and of inference (the TFLOPs column of the paper's Table 6).

Counted by ``torch.utils.flop_counter.FlopCounterMode`` while symbolic (``meta``) steps run:
matrix products, convolutions and attention, 2 FLOPs per multiply-add; element-wise work
(norms, activations, the optimizer) is not counted, as usual for such figures. No weights
are needed and nothing is computed, so the real-size models are counted in seconds.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional

import torch
from torch.utils import flop_counter
from yacs.config import CfgNode as CN

from .step import TrainingStep, build_training_step

TERA = 1e12
# peft names every adapter's matrices <layer>.lora_A.<adapter> and <layer>.lora_B.<adapter>.
_LORA_MODULE = re.compile(r"\.lora_[AB]\.[^.]+$")


def _cpu_flash_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_attention_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args,
                                       out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _cpu_attention_formulas() -> Dict[object, Callable]:
    """FLOP formulas of the CPU attention kernel: a symbolic step presents its tensors as CPU
    tensors, so scaled_dot_product_attention dispatches to it, and the flop counter only
    knows the GPU kernels (same formulas)."""
    ops = torch.ops.aten
    if not hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}
    return {ops._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flop,
            ops._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_attention_backward_flop}


def _in_place_addmm_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.mm_flop(a_shape, b_shape)  # as the counter's addmm: the product, not the sum


def _in_place_product_formulas() -> Dict[object, Callable]:
    """``addmm_``, which the flop counter does not know: the fused LoRA layers
    (``train.fused_lora``) add their update into the base layer's output with it."""
    return {torch.ops.aten.addmm_: _in_place_addmm_flop}


def flop_counter_mode() -> flop_counter.FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts the CPU attention kernel and ``addmm_``."""
    return flop_counter.FlopCounterMode(display=False,
                                        custom_mapping={**_cpu_attention_formulas(), **_in_place_product_formulas()})


@dataclass
class FlopCount:
    """Counted FLOPs in all (``total``) and per module (``by_module``, each including its
    sub-modules; names as the flop counter gives them, e.g. ``ClipReID.backbone``)."""

    total: int
    by_module: Dict[str, int]

    def module(self, name: str) -> int:
        """FLOPs of module ``name``; a module that was not called itself but whose children
        were (the VAE: ``encode`` calls its encoder and quant_conv) counts as their sum."""
        if name in self.by_module:
            return self.by_module[name]
        prefix = name + "."
        return sum(flops for key, flops in self.by_module.items()
                   if key.startswith(prefix) and "." not in key[len(prefix):])

    def lora(self, under: str) -> int:
        """FLOPs of the LoRA adapter matrices inside module ``under``."""
        return sum(flops for key, flops in self.by_module.items()
                   if key.startswith(under + ".") and _LORA_MODULE.search(key))


@contextlib.contextmanager
def _regular_attention_path() -> Iterator[None]:
    """Without nn.MultiheadAttention's inference fast path: it fuses the projections and the
    attention into one kernel (``_native_multi_head_attention``) that the flop counter has
    no formula for; the regular path computes the same products, op by op."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "get_fastpath_enabled"):
        yield
        return
    enabled = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(enabled)


def count_flops(step: TrainingStep, work: Callable[[], object]) -> FlopCount:
    """The FLOPs ``work`` (e.g. ``step.run``) performs on ``step``."""
    with _regular_attention_path(), step.scope(), flop_counter_mode() as counter:
        work()
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return FlopCount(counter.get_total_flops(), by_module)


def component_names(step: TrainingStep) -> Dict[str, str]:
    """The flop counter's module names of the step's components."""
    from ..models import ClipReID

    # "vit" for the paper's CLIP model (Table 6's rows), "reid_backbone" for a torchreid model.
    backbone_key = "vit" if isinstance(step.model, ClipReID) else "reid_backbone"
    names = {backbone_key: f"{type(step.model).__name__}.backbone"}
    if step.feedback is not None:
        root = type(step.feedback).__name__
        names.update(unet=f"{root}.denoiser.unet", vae_encoder=f"{root}.denoiser.vae", condition=f"{root}.condition")
    return names


def tflops(flops: float, digits: int = 3) -> float:
    return round(flops / TERA, digits)


def _variant(cfg: CN, engine: str, latent_cache: Optional[bool] = None) -> CN:
    variant = cfg.clone()
    variant.defrost()
    variant.engine = engine
    variant.model.pretrained = False  # counting needs no weights
    if latent_cache is not None:
        variant.dcac.diffusion.latent_cache = latent_cache
    return variant


STEP_VARIANTS = {"baseline": ("baseline", None), "dcac_vae": ("dcac", False), "dcac_cache": ("dcac", True)}


def forward_flop_counts(steps: Dict[str, TrainingStep]) -> Dict[str, FlopCount]:
    """Forward counts of the ``baseline``, ``dcac_vae`` (VAE every step) and ``dcac_cache``
    steps, and ``inference`` (the baseline step's Re-ID encoder in eval mode)."""
    counts = {key: count_flops(steps[key], steps[key].forward) for key in STEP_VARIANTS}
    counts["inference"] = count_flops(steps["baseline"], steps["baseline"].inference)
    return counts


def flops_report(counts: Dict[str, FlopCount], steps: Dict[str, TrainingStep], batch_size: int) -> Dict[str, object]:
    """TFLOPs of :func:`forward_flop_counts`, with the components of the VAE-every-step step."""
    with_vae = counts["dcac_vae"]
    names = component_names(steps["dcac_vae"])
    components = {key: tflops(with_vae.module(name), 4 if key == "condition" else 3) for key, name in names.items()}
    components["unet_lora_adapters"] = tflops(with_vae.lora(names["unet"]), 4)
    return {"batch_size": batch_size,
            "unit": "TFLOPs of the forward pass (torch.utils.flop_counter: matrix products, convolutions, "
                    "attention; 2 per multiply-add)",
            "training_baseline": tflops(counts["baseline"].total),
            "training_dcac_vae_every_step": tflops(with_vae.total),
            "training_dcac_latent_cache": tflops(counts["dcac_cache"].total),
            "inference": tflops(counts["inference"].total), "components": components}


def forward_flops(cfg: CN, num_classes: int, batch_size: int = 64,
                  steps: Optional[Dict[str, TrainingStep]] = None) -> Dict[str, object]:
    """Forward TFLOPs (Table 6's measure) of the baseline step, the dcac step with the VAE
    encoding every step (the paper's setting) and with the latent cache (posteriors looked
    up, no VAE), and of inference (the Re-ID encoder in eval mode), with the components
    (ViT, U-Net and its LoRA adapters, VAE encoder, condition) of the VAE-every-step step.

    ``steps`` may hold symbolic steps already built for ``baseline``, ``dcac_vae`` and
    ``dcac_cache`` (at this batch size); the others are built here from ``cfg``.
    """
    steps = dict(steps or {})
    for key, (engine, cache) in STEP_VARIANTS.items():
        if key not in steps:
            steps[key] = build_training_step(_variant(cfg, engine, cache), num_classes, batch_size, device="meta")
    return flops_report(forward_flop_counts(steps), steps, batch_size)


def training_step_flops(cfg: CN, num_classes: int, batch_size: int) -> int:
    """FLOPs of one whole training step of ``cfg.engine`` (forward, backward, optimizer),
    with the config's latent cache and gradient checkpointing (its recomputation counts)."""
    step = build_training_step(_variant(cfg, cfg.engine), num_classes, batch_size, device="meta")
    return count_flops(step, step.run).total
