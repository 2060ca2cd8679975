"""Engine ``dcac``: the baseline plus diffusion feedback through the condition (paper eq. 13)."""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import torch
from torch import nn

from ..data.loaders import train_items
from ..data.views import diffusion_view_transform
from ..diffusion import (DiffusionComponents, DiffusionDenoiser, apply_finetune_mode, count_parameters,
                         load_diffusion_components, load_trainable_state_dict, sample_from_posterior,
                         save_tiny_stable_diffusion, trainable_state_dict)
from ..diffusion.conditioning import CorrelationAwareCondition
from ..diffusion.latent_cache import LatentCache, vae_fingerprint
from ..registry import ENGINES
from ..utils import distributed
from ..utils.preparation import prepared_in_rounds
from ..utils.rng import preserved_rng
from ..utils.writable import environment_fix, writing
from .baseline import BaselineEngine

DEFAULT_CACHE = "~/.cache/dcac-reid"


def total_loss(loss_reid: torch.Tensor, loss_dif: torch.Tensor, lambda_dif: float = 1.0) -> torch.Tensor:
    """Eq. 13: L_total = L_ReID + lambda * L_dif (lambda 1 in the paper)."""
    return loss_reid + lambda_dif * loss_dif


def cache_dir() -> str:
    """Where generated artefacts (the tiny demo diffusion model) live: $DCAC_CACHE or ~/.cache/dcac-reid."""
    return os.environ.get("DCAC_CACHE") or os.path.expanduser(DEFAULT_CACHE)


def tiny_diffusion_model() -> str:
    """The tiny demo diffusion model, written under :func:`cache_dir` on first use; a cache that
    cannot be written is named with the variable that moves it."""
    folder = os.path.join(cache_dir(), "tiny-stable-diffusion")
    with writing("the generated tiny diffusion model", folder, environment_fix("DCAC_CACHE", DEFAULT_CACHE)):
        return save_tiny_stable_diffusion(folder)


def resolve_diffusion_source(pretrained: str) -> str:
    """``tiny`` becomes a locally written tiny diffusers folder, loaded like any other folder."""
    return tiny_diffusion_model() if pretrained == "tiny" else pretrained


class DiffusionFeedback(nn.Module):
    """The diffusion branch of DCAC: condition (eq. 12) + denoiser (eq. 10-11).

    ``checkpoint_state_dict`` holds only what training changes (prompts, condition
    transform, adapters or trained U-Net parts), never the frozen U-Net or the VAE.
    """

    def __init__(self, condition: CorrelationAwareCondition, denoiser: DiffusionDenoiser,
                 weights_description: str = "") -> None:
        super().__init__()
        self.condition = condition
        self.denoiser = denoiser
        # Where the Stable Diffusion weights came from and which U-Net copy, for the run log.
        self.weights_description = weights_description

    def forward(self, images: Optional[torch.Tensor], logits: torch.Tensor, features: torch.Tensor,
                labels: torch.Tensor, latents: Optional[torch.Tensor] = None) -> torch.Tensor:
        """L_dif of eq. 11 for the diffusion views ``images`` (or their scaled ``latents``),
        conditioned on the Re-ID outputs."""
        return self.denoiser(images, self.condition(logits, features, labels), latents=latents)

    def checkpoint_state_dict(self) -> Dict[str, torch.Tensor]:
        return trainable_state_dict(self)

    def load_checkpoint_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        load_trainable_state_dict(self, state)


def build_diffusion_feedback(cfg, num_classes: int, feature_dim: int,
                             components: Optional[DiffusionComponents] = None) -> DiffusionFeedback:
    """Stable Diffusion components adapted as ``dcac.finetune`` says, and the condition.

    ``components`` defaults to the weights ``dcac.diffusion.pretrained`` names; the training
    benchmark passes randomly initialised real-size ones instead.
    """
    if components is None:
        components = load_diffusion_components(resolve_diffusion_source(cfg.dcac.diffusion.pretrained),
                                               random_unet=cfg.dcac.finetune == "scratch",
                                               ema_weights=cfg.dcac.diffusion.ema_weights)
    unet = apply_finetune_mode(components.unet, cfg.dcac.finetune, rank=cfg.dcac.lora.rank,
                               alpha=cfg.dcac.lora.alpha)
    denoiser = DiffusionDenoiser(unet, components.vae, components.noise_scheduler)
    condition = CorrelationAwareCondition(num_classes, feature_dim, prompt_dim=denoiser.prompt_dim,
                                          mode=cfg.dcac.condition.mode, transform=cfg.dcac.condition.transform,
                                          temperature=cfg.dcac.condition.temperature)
    return DiffusionFeedback(condition, denoiser, components.description)


@ENGINES.register("dcac")
class DCACEngine(BaselineEngine):
    """L_id + L_pcl + lambda * L_dif, the diffusion loss conditioned on the classifier's
    probabilities so that its gradient reaches the Re-ID model (paper 4.4).

    The diffusion branch gets its latents from the latent cache (drawn fresh each step
    from the posterior cached for ``data['impath']``, the default), or, with
    ``dcac.diffusion.latent_cache False``, encodes the raw diffusion view that then rides
    in each batch beside the Re-ID view (``data['img']`` is the pair).
    """

    def __init__(self, datamanager, model: nn.Module, optimizer, scheduler=None, use_gpu: bool = True,
                 feedback: Optional[DiffusionFeedback] = None, lambda_dif: float = 1.0,
                 latent_cache_path: Optional[str] = None, diffusion_image_size: int = 128, **kwargs) -> None:
        super().__init__(datamanager, model, optimizer, scheduler, use_gpu=use_gpu, **kwargs)
        # Without the diffusion branch the engine can still evaluate (test.evaluate), not train.
        self.feedback = feedback.to(self.device) if feedback is not None else None
        self.lambda_dif = lambda_dif
        self.latent_cache_path = latent_cache_path
        self.diffusion_image_size = diffusion_image_size
        self.latent_cache: Optional[LatentCache] = None

    def setup_summary(self, cfg) -> List[str]:
        """The baseline's lines plus the diffusion branch: Stable Diffusion source and U-Net copy,
        fine-tuning, condition, trainable counts, latent cache."""
        lines = super().setup_summary(cfg)
        if self.feedback is None:
            return lines
        dcac = cfg.dcac
        finetune = dcac.finetune
        if finetune == "lora":
            finetune += f", rank {dcac.lora.rank}, alpha {dcac.lora.alpha:g} (scale {dcac.lora.alpha / dcac.lora.rank:g})"
        condition = self.feedback.condition
        condition_count = count_parameters(condition)["trainable"]
        unet_count = count_parameters(self.feedback.denoiser)["trainable"]
        reid_count = count_parameters(self.model)["trainable"]
        cache = f"on ({self.latent_cache_path})" if self.latent_cache_path else "off (the VAE encodes every step)"
        lines[1:2] = [
            f"Stable Diffusion: {self.feedback.weights_description}",
            f"U-Net fine-tuning: {finetune}",
            f"Condition: {condition.mode}, transform {dcac.condition.transform}, tau_c {condition.temperature:g}, "
            f"lambda {self.lambda_dif:g}",
            f"Trainable parameters: Re-ID model {reid_count:,}; condition {condition_count:,}; "
            f"U-Net {unet_count:,}; total {reid_count + condition_count + unet_count:,}",
        ]
        return lines + [f"Latent cache: {cache}"]

    @staticmethod
    def needs_diffusion_view(cfg) -> bool:
        """Batches carry the raw diffusion view only when latents are encoded every step."""
        return not cfg.dcac.diffusion.latent_cache

    def build_latent_cache(self) -> LatentCache:
        """Encode (once) the VAE posterior of every training image, as the diffusion view sees it."""
        vae = self.feedback.denoiser.vae
        cache = LatentCache(self.latent_cache_path, vae_fingerprint(vae, self.diffusion_image_size))
        encoded = cache.build([item[0] for item in train_items(self.datamanager)], vae,
                              diffusion_view_transform(self.diffusion_image_size), self.memory_batch_size,
                              self.memory_workers, self.device)
        print(f"Latent cache {self.latent_cache_path}: {len(cache.index)} images, {encoded} encoded now")
        return cache

    def setup_distributed(self) -> None:
        super().setup_distributed()
        # The frozen U-Net and VAE need no gradient sync and no per-step buffer broadcast.
        self._train_feedback = distributed.wrap_ddp(self.feedback, self.use_gpu, sync_buffers_every_step=False)

    @property
    def train_feedback(self) -> nn.Module:
        wrapped = self.__dict__.get("_train_feedback")
        return wrapped if wrapped is not None else self.feedback

    def train(self, *args, **kwargs):
        if self.feedback is None:
            raise RuntimeError("The dcac engine needs its diffusion branch to train (feedback=...).")
        if self.latent_cache_path and self.latent_cache is None:
            # One process per file system encodes and writes the cache; the others then read
            # it. Not a training step: the RNG streams stay where they were (exact resume).
            with preserved_rng(), prepared_in_rounds([self.latent_cache_path]):
                self.latent_cache = self.build_latent_cache()
        return super().train(*args, **kwargs)

    @classmethod
    def build_auxiliary(cls, cfg, model: nn.Module, num_classes: int) -> DiffusionFeedback:
        """Modules trained beside the Re-ID model; the launcher puts them in the same optimizer."""
        return build_diffusion_feedback(cfg, num_classes, model.feature_dim)

    @classmethod
    def from_config(cls, cfg, datamanager, model, optimizer, scheduler, use_gpu: bool, auxiliary=None):
        cache_path = os.path.join(cfg.data.save_dir, "latent_cache.pth") if cfg.dcac.diffusion.latent_cache else None
        return super().from_config(cfg, datamanager, model, optimizer, scheduler, use_gpu,
                                   feedback=auxiliary, lambda_dif=cfg.dcac.lambda_dif,
                                   latent_cache_path=cache_path, diffusion_image_size=cfg.dcac.diffusion.image_size)

    def set_model_mode(self, mode: str = "train", names=None) -> None:
        super().set_model_mode(mode, names)
        if self.feedback is not None:
            self.feedback.train(mode == "train")

    def parse_data_for_train(self, data: dict):
        images = data["img"]
        reid_view = images[0] if isinstance(images, (list, tuple)) else images
        return reid_view, data["pid"]

    def diffusion_inputs(self, data: dict) -> Dict[str, Optional[torch.Tensor]]:
        """Either fresh latents drawn from the cached posteriors, or the raw diffusion views."""
        if self.latent_cache is not None:
            mean, std = self.latent_cache.lookup(data["impath"], self.device)
            scaling = self.feedback.denoiser.vae.config.scaling_factor
            return {"images": None, "latents": sample_from_posterior(mean, std, scaling_factor=scaling)}
        return {"images": data["img"][1].to(self.device), "latents": None}

    def compute_losses(self, output, pids: torch.Tensor, data: dict) -> Dict[str, torch.Tensor]:
        terms = super().compute_losses(output, pids, data)
        inputs = self.diffusion_inputs(data)
        terms["loss_dif"] = self.train_feedback(inputs["images"], output.logits, output.f_bn, pids, latents=inputs["latents"])
        return terms

    def combine_losses(self, terms: Dict[str, torch.Tensor]) -> torch.Tensor:
        return total_loss(super().combine_losses(terms), terms["loss_dif"], self.lambda_dif)

    def extra_state(self) -> dict:
        state = super().extra_state()
        if self.feedback is not None:
            state["diffusion"] = {k: v.detach().cpu().clone() for k, v in self.feedback.checkpoint_state_dict().items()}
        return state

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        if "diffusion" in state and self.feedback is not None:
            self.feedback.load_checkpoint_state_dict(state["diffusion"])
