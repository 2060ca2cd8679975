"""``dcac stats``: parameter counts per component, forward FLOPs and the planned peak GPU
memory of a training step, for real-size architectures, without weights, datasets or a GPU
(everything is built on the meta device)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from yacs.config import CfgNode as CN

from dcac_config.errors import ConfigError

from ..diffusion import apply_finetune_mode, build_diffusion_architecture, count_parameters, load_diffusion_configs
from ..diffusion.conditioning import CorrelationAwareCondition
from ..engines.dcac import resolve_diffusion_source
from ..run.launcher import build_model

# Training identities of the standard datasets (paper Table 1 and torchreid's splits).
TRAIN_IDENTITIES = {"market1501": 751, "dukemtmcreid": 702, "msmt17": 1041, "cuhk03": 767,
                    "msmt17_folder": 1041, "cuhk03_np": 767, "synthetic_a": 64, "synthetic_b": 64}


def training_identities(sources: Sequence[str], override: Optional[int] = None) -> int:
    """Identities the classifier and prompts are built for: ``override``, else the sum over sources."""
    if override is not None:
        return int(override)
    unknown = [s for s in sources if s not in TRAIN_IDENTITIES]
    if unknown:
        raise ConfigError(f"No known training-identity count for {unknown}; pass --num-classes N.")
    return sum(TRAIN_IDENTITIES[s] for s in sources)


def parameter_stats(cfg: CN, num_classes: Optional[int] = None) -> Dict[str, object]:
    """Total and trainable parameter counts of the Re-ID model, the ID prompts (condition),
    the U-Net with its adapters and the VAE, as ``engine: dcac`` with ``cfg`` would train them."""
    n = training_identities(cfg.data.sources, num_classes)
    configs = load_diffusion_configs(resolve_diffusion_source(cfg.dcac.diffusion.pretrained))
    architecture_only = cfg.clone()
    architecture_only.model.pretrained = False  # counting needs no weights
    with torch.device("meta"):
        reid = build_model(architecture_only, n, "reid", use_gpu=False)
        components = build_diffusion_architecture(configs, device="meta")
        unet = apply_finetune_mode(components.unet, cfg.dcac.finetune, rank=cfg.dcac.lora.rank,
                                   alpha=cfg.dcac.lora.alpha)
        condition = CorrelationAwareCondition(n, reid.feature_dim, prompt_dim=unet.config.cross_attention_dim,
                                              mode=cfg.dcac.condition.mode, transform=cfg.dcac.condition.transform)
    parts = {"reid_model": count_parameters(reid), "id_prompts": count_parameters(condition),
             "unet": count_parameters(unet), "vae": {"total": count_parameters(components.vae)["total"], "trainable": 0}}
    trainable = sum(part["trainable"] for part in parts.values())
    return {"num_classes": n, "finetune": cfg.dcac.finetune,
            "lora_rank": cfg.dcac.lora.rank if cfg.dcac.finetune == "lora" else None,
            "condition": cfg.dcac.condition.mode, **parts,
            "trainable_total": trainable, "trainable_total_millions": round(trainable / 1e6, 2)}


def _planning_config(cfg: CN, engine: str, amp: str, gradient_checkpointing: bool, latent_cache: bool) -> CN:
    """``cfg`` for a symbolic step of ``engine``: no weights, the given precision and options."""
    variant = cfg.clone()
    variant.defrost()
    variant.engine = engine
    variant.model.pretrained = False  # planning needs no weights
    variant.train.amp = amp
    variant.train.gradient_checkpointing = gradient_checkpointing
    variant.dcac.diffusion.latent_cache = latent_cache
    return variant


def flops_and_memory_stats(cfg: CN, num_classes: Optional[int] = None, batch_size: int = 64, amp: str = "fp16",
                           gradient_checkpointing: bool = False, latent_cache: bool = True,
                           gpu_memory_gb: float = 24.0) -> Dict[str, object]:
    """Forward TFLOPs of the training steps and of inference (paper Table 6's measure), and
    the planned peak GPU memory of one training step of the baseline and of dcac, and of
    inference, at ``batch_size`` with the given precision and options; all on the meta
    device (real-size architectures, no weights, no GPU).

    The FLOPs cover the dcac step with the VAE encoding every step (the paper's setting) and
    with the latent cache; the memory plan the dcac step as ``latent_cache`` says.
    """
    from .flops import STEP_VARIANTS, forward_flops
    from .memory_plan import GIB, plan_inference_memory, plan_training_memory
    from .step import build_training_step

    n = training_identities(cfg.data.sources, num_classes)
    # One symbolic step per variant serves both: counting the forward changes nothing.
    steps = {key: build_training_step(_planning_config(cfg, engine, amp, gradient_checkpointing,
                                                       latent_cache if cache is None else cache),
                                      n, batch_size, device="meta")
             for key, (engine, cache) in STEP_VARIANTS.items()}
    flops = forward_flops(cfg, n, batch_size, steps)
    planned = {"baseline": plan_training_memory(steps["baseline"]),
               "dcac": plan_training_memory(steps["dcac_cache" if latent_cache else "dcac_vae"])}
    memory: Dict[str, object] = {
        "batch_size": batch_size, "amp": amp, "gradient_checkpointing": gradient_checkpointing,
        "latent_cache": latent_cache,
        "unit": "GiB of live tensors at the step's peak, as torch.cuda.max_memory_allocated counts them; a "
                "measurement also holds the cuBLAS/cuDNN workspaces (allocated through the same caching "
                "allocator, not planned here); max_memory_reserved adds the cached free blocks, nvidia-smi the "
                "CUDA context",
    }
    for name, plan in planned.items():
        memory[name] = {**plan.as_gib(), "fits_gpu": plan.peak_bytes / GIB <= gpu_memory_gb}
    memory["inference"] = plan_inference_memory(steps["baseline"]).as_gib()
    memory["gpu_memory_gb"] = gpu_memory_gb
    return {"flops": flops, "memory": memory}
