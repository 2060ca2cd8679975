"""``dcac stats``: parameter counts per component, for real-size architectures, without
weights or datasets (everything is built on the meta device)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from yacs.config import CfgNode as CN

from .conditioning import CorrelationAwareCondition
from .config import ConfigError
from .diffusion import apply_finetune_mode, build_diffusion_architecture, count_parameters, load_diffusion_configs
from .engines.dcac import resolve_diffusion_source
from .launcher import build_model

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
