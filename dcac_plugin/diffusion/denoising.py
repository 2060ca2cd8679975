"""DCAC's diffusion loss (paper 4.2, eq. 10-11): encode, noise, predict the noise, MSE.

The VAE is frozen, so the latent of an image is a draw from a fixed posterior: the
posterior can be computed once (:func:`posterior_parameters`) and sampled every step
(:func:`sample_from_posterior`), which is what :func:`sample_latents` does in one go.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

VAE_SCALING_FACTOR = 0.18215


@torch.no_grad()
def posterior_parameters(vae: AutoencoderKL, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior q(F_0 | x_0) for images in [-1, 1], [B, 3, H, W].

    No gradient: the VAE is frozen and nothing upstream of the images trains through it.
    """
    posterior = vae.encode(images.to(vae.dtype)).latent_dist
    return posterior.mean, posterior.std


def sample_from_posterior(
    mean: torch.Tensor,
    std: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    scaling_factor: float = VAE_SCALING_FACTOR,
) -> torch.Tensor:
    """A latent F_0 = (mean + std * N(0, I)) * scaling factor, as SD's training scales latents.

    A sample, not the posterior mode: that is what the reference trains on (paper 4.2).
    """
    noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return (mean + std * noise) * scaling_factor


def sample_latents(
    vae: AutoencoderKL, images: torch.Tensor, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Scaled latent F_0 = E_vae(x_0) of images in [-1, 1]: a posterior sample x ``vae.config.scaling_factor``."""
    mean, std = posterior_parameters(vae, images)
    return sample_from_posterior(mean, std, generator, scaling_factor=vae.config.scaling_factor)


def noisy_latents(
    latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, noise_scheduler: DDPMScheduler
) -> torch.Tensor:
    """DCAC eq. 10 (eq. 4 of the preliminaries): F_t = sqrt(abar_t) F_0 + sqrt(1 - abar_t) eps_t.

    abar_t comes from the scheduler's (scaled-linear) schedule, per sample's timestep.
    """
    return noise_scheduler.add_noise(latents, noise, timesteps)


def denoising_loss(noise_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """DCAC eq. 11: L_dif = E_t ||eps_t - eps_theta(F_t, c)||^2, the MSE averaged over all elements.

    Computed in fp32 so that fp16 autocast does not round the squared errors.
    """
    return F.mse_loss(noise_pred.float(), noise.float(), reduction="mean")


def sample_timesteps(
    batch_size: int, num_train_timesteps: int, device: torch.device, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """One timestep per sample, uniform over 0 .. num_train_timesteps - 1."""
    # Drawn on the generator's device so a CPU generator also drives a GPU run reproducibly.
    draw_device = generator.device if generator is not None else device
    timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, device=draw_device)
    return timesteps.to(device)


class DiffusionDenoiser(nn.Module):
    """The conditioned denoising branch of DCAC: images and condition c in, L_dif (eq. 11) out.

    Holds the (adapted) U-Net and the frozen VAE as sub-modules and the noise scheduler as
    a plain attribute (it has no parameters). The VAE stays in eval mode whatever mode the
    denoiser is put in, and has no trainable parameter, so ``trainable_state_dict`` of the
    denoiser leaves it out.
    """

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, noise_scheduler: DDPMScheduler) -> None:
        super().__init__()
        self.unet = unet
        self.vae = vae.requires_grad_(False).eval()
        self.noise_scheduler = noise_scheduler

    @property
    def prompt_dim(self) -> int:
        """Width of the condition token the U-Net cross-attends to (768 for SD1.5)."""
        return self.unet.config.cross_attention_dim

    def train(self, mode: bool = True) -> "DiffusionDenoiser":
        """Switch the U-Net's mode; the frozen VAE always stays in eval mode."""
        super().train(mode)
        self.vae.eval()
        return self

    def _check_condition(self, condition: torch.Tensor, batch_size: int) -> None:
        """The condition must be [B, tokens, prompt_dim]; a mismatch would fail deep in attention."""
        if condition.dim() != 3 or condition.shape[0] != batch_size or condition.shape[-1] != self.prompt_dim:
            raise ValueError(
                f"condition must have shape [{batch_size}, tokens, {self.prompt_dim}], got {tuple(condition.shape)}."
            )

    def forward(
        self,
        images: Optional[torch.Tensor],
        condition: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        latents: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """L_dif for one batch: latents of ``images`` (or the given scaled ``latents``), noise, U-Net, MSE.

        ``images`` are in [-1, 1], [B, 3, H, W]; ``condition`` is [B, 1, prompt_dim]. The
        noise and the timesteps (uniform per sample) are drawn from ``generator`` if given.
        """
        if latents is None:
            latents = sample_latents(self.vae, images, generator)
        self._check_condition(condition, latents.shape[0])
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        timesteps = sample_timesteps(
            latents.shape[0], self.noise_scheduler.config.num_train_timesteps, latents.device, generator
        )
        noisy = noisy_latents(latents, noise, timesteps, self.noise_scheduler)
        noise_pred = self.unet(noisy, timesteps, encoder_hidden_states=condition).sample
        return denoising_loss(noise_pred, noise)
