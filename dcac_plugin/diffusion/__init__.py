"""DCAC's diffusion branch (paper 4.2): Stable Diffusion v1.5 loading, U-Net fine-tuning modes, L_dif."""
from .adaptation import (FINETUNE_MODES, LORA_TARGET_MODULES, apply_finetune_mode, count_parameters,
                         load_trainable_state_dict, lora_config, trainable_state_dict)
from .components import (SD15_CONFIG_DIR, DiffusionComponents, build_diffusion_architecture, check_noise_schedule,
                         load_diffusion_components, load_diffusion_configs, save_tiny_stable_diffusion)
from .sources import DEFAULT_PRETRAINED, DiffusionWeightsError
from .denoising import (VAE_SCALING_FACTOR, DiffusionDenoiser, denoising_loss, noisy_latents, posterior_parameters,
                        sample_from_posterior, sample_latents, sample_timesteps)

__all__ = [
    "DEFAULT_PRETRAINED",
    "FINETUNE_MODES",
    "LORA_TARGET_MODULES",
    "SD15_CONFIG_DIR",
    "VAE_SCALING_FACTOR",
    "DiffusionComponents",
    "DiffusionDenoiser",
    "DiffusionWeightsError",
    "apply_finetune_mode",
    "build_diffusion_architecture",
    "check_noise_schedule",
    "count_parameters",
    "denoising_loss",
    "load_diffusion_components",
    "load_diffusion_configs",
    "load_trainable_state_dict",
    "lora_config",
    "noisy_latents",
    "posterior_parameters",
    "sample_from_posterior",
    "sample_latents",
    "sample_timesteps",
    "save_tiny_stable_diffusion",
    "trainable_state_dict",
]
