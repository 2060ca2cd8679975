"""Engine ``dcac``: the baseline plus diffusion feedback through the condition (paper eq. 13)."""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch
from torch import nn

from ..conditioning import CorrelationAwareCondition
from ..diffusion import (DiffusionDenoiser, apply_finetune_mode, load_diffusion_components,
                         load_trainable_state_dict, save_tiny_stable_diffusion, trainable_state_dict)
from ..registry import ENGINES
from .baseline import BaselineEngine


def total_loss(loss_reid: torch.Tensor, loss_dif: torch.Tensor, lambda_dif: float = 1.0) -> torch.Tensor:
    """Eq. 13: L_total = L_ReID + lambda * L_dif (lambda 1 in the paper)."""
    return loss_reid + lambda_dif * loss_dif


def cache_dir() -> str:
    """Where generated artefacts (the tiny demo diffusion model) live: $DCAC_CACHE or ~/.cache/dcac-reid."""
    return os.environ.get("DCAC_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "dcac-reid"))


def resolve_diffusion_source(pretrained: str) -> str:
    """``tiny`` becomes a locally written tiny diffusers folder, loaded like any other folder."""
    if pretrained == "tiny":
        return save_tiny_stable_diffusion(os.path.join(cache_dir(), "tiny-stable-diffusion"))
    return pretrained


class DiffusionFeedback(nn.Module):
    """The diffusion branch of DCAC: condition (eq. 12) + denoiser (eq. 10-11).

    ``checkpoint_state_dict`` holds only what training changes (prompts, condition
    transform, adapters or trained U-Net parts), never the frozen U-Net or the VAE.
    """

    def __init__(self, condition: CorrelationAwareCondition, denoiser: DiffusionDenoiser) -> None:
        super().__init__()
        self.condition = condition
        self.denoiser = denoiser

    def forward(self, images: torch.Tensor, logits: torch.Tensor, features: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        """L_dif of eq. 11 for the diffusion views ``images``, conditioned on the Re-ID outputs."""
        return self.denoiser(images, self.condition(logits, features, labels))

    def checkpoint_state_dict(self) -> Dict[str, torch.Tensor]:
        return trainable_state_dict(self)

    def load_checkpoint_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        load_trainable_state_dict(self, state)


def build_diffusion_feedback(cfg, num_classes: int, feature_dim: int) -> DiffusionFeedback:
    """Stable Diffusion components adapted as ``dcac.finetune`` says, and the condition."""
    components = load_diffusion_components(resolve_diffusion_source(cfg.dcac.diffusion.pretrained),
                                           random_unet=cfg.dcac.finetune == "scratch")
    unet = apply_finetune_mode(components.unet, cfg.dcac.finetune, rank=cfg.dcac.lora.rank,
                               alpha=cfg.dcac.lora.alpha)
    denoiser = DiffusionDenoiser(unet, components.vae, components.noise_scheduler)
    condition = CorrelationAwareCondition(num_classes, feature_dim, prompt_dim=denoiser.prompt_dim,
                                          mode=cfg.dcac.condition.mode, transform=cfg.dcac.condition.transform,
                                          temperature=cfg.dcac.condition.temperature)
    return DiffusionFeedback(condition, denoiser)


@ENGINES.register("dcac")
class DCACEngine(BaselineEngine):
    """L_id + L_pcl + lambda * L_dif, the diffusion loss conditioned on the classifier's
    probabilities so that its gradient reaches the Re-ID model (paper 4.4).

    Each batch carries two views of every image (``data['img']`` is a pair): the augmented
    Re-ID view and the raw diffusion view.
    """

    diffusion_view = True

    def __init__(self, datamanager, model: nn.Module, optimizer, scheduler=None, use_gpu: bool = True,
                 feedback: Optional[DiffusionFeedback] = None, lambda_dif: float = 1.0, **kwargs) -> None:
        super().__init__(datamanager, model, optimizer, scheduler, use_gpu=use_gpu, **kwargs)
        # Without the diffusion branch the engine can still evaluate (test.evaluate), not train.
        self.feedback = feedback.to(self.device) if feedback is not None else None
        self.lambda_dif = lambda_dif

    def train(self, *args, **kwargs):
        if self.feedback is None:
            raise RuntimeError("The dcac engine needs its diffusion branch to train (feedback=...).")
        return super().train(*args, **kwargs)

    @classmethod
    def build_auxiliary(cls, cfg, model: nn.Module, num_classes: int) -> DiffusionFeedback:
        """Modules trained beside the Re-ID model; the launcher puts them in the same optimizer."""
        return build_diffusion_feedback(cfg, num_classes, model.feature_dim)

    @classmethod
    def from_config(cls, cfg, datamanager, model, optimizer, scheduler, use_gpu: bool, auxiliary=None):
        return super().from_config(cfg, datamanager, model, optimizer, scheduler, use_gpu,
                                   feedback=auxiliary, lambda_dif=cfg.dcac.lambda_dif)

    def set_model_mode(self, mode: str = "train", names=None) -> None:
        super().set_model_mode(mode, names)
        if self.feedback is not None:
            self.feedback.train(mode == "train")

    def parse_data_for_train(self, data: dict):
        reid_view, _ = data["img"]
        return reid_view, data["pid"]

    def compute_losses(self, output, pids: torch.Tensor, data: dict) -> Dict[str, torch.Tensor]:
        terms = super().compute_losses(output, pids, data)
        diffusion_view = data["img"][1].to(self.device)
        terms["loss_dif"] = self.feedback(diffusion_view, output.logits, output.f_bn, pids)
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
