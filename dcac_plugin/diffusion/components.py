"""Stable Diffusion v1.5 components for DCAC (paper, section 4.2): U-Net, VAE, DDPM schedule.

Three weight sources are understood, all ending in the same diffusers modules:

* a local diffusers folder with ``unet/``, ``vae/`` and ``scheduler/`` sub-folders;
* one original-format (CompVis / LDM) checkpoint file, ``.ckpt`` or ``.safetensors``,
  converted by diffusers' single-file loader against the SD1.5 configs shipped in
  ``sd15/``;
* a Hugging Face repo id, read through the local hub cache (nothing is downloaded when
  ``HF_HUB_OFFLINE=1``).

Offline or on a wrong path, :class:`DiffusionWeightsError` says what to download and
which config key to set.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Dict, Iterator, NamedTuple, Tuple, Union

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

SD15_CONFIG_DIR: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sd15")
DEFAULT_PRETRAINED = "stable-diffusion-v1-5/stable-diffusion-v1-5"

_SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors")
_SUBFOLDERS = ("unet", "vae", "scheduler")
# Key prefixes of the original LDM checkpoint layout (what diffusers' converters read).
_LDM_UNET_PREFIX = "model.diffusion_model."
_LDM_VAE_PREFIX = "first_stage_model."
# The DDPM schedule DCAC trains with (paper 5.2 / SD1.5): anything else changes eq. 10.
_REQUIRED_SCHEDULE = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}
_TINY_SETTINGS_FILE = "dcac_tiny_settings.json"

StateDict = Dict[str, torch.Tensor]
# U-Net, VAE and the scheduler config, before the schedule check and freezing.
RawComponents = Tuple[UNet2DConditionModel, AutoencoderKL, Dict[str, Any]]


class DiffusionWeightsError(RuntimeError):
    """Stable Diffusion weights could not be found or read; the message says how to fix it."""


class DiffusionComponents(NamedTuple):
    """The three parts of Stable Diffusion that DCAC's denoising loss needs."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    noise_scheduler: DDPMScheduler


def _download_hint(source: str) -> str:
    """The fix to append to every weights error: what to fetch and which key to set."""
    return (
        f"Could not load Stable Diffusion from {source!r}. Download the diffusers folder of "
        f"{DEFAULT_PRETRAINED} (unet/, vae/, scheduler/) or the single file "
        "v1-5-pruned.safetensors / v1-5-pruned.ckpt, then set dcac.diffusion.pretrained /path "
        "(the folder or the file)."
    )


def _first_line(error: BaseException) -> str:
    """First line of an exception's message, so a chained hint stays readable."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0].rstrip('.') if lines else ''}"


def _looks_like_local_path(source: str) -> bool:
    """Whether ``source`` was meant as a filesystem path rather than a hub id ``owner/name``."""
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or source.endswith(_SINGLE_FILE_SUFFIXES)
        or source.count("/") != 1
    )


def _is_single_file(source: str) -> bool:
    """Whether ``source`` is an existing original-format checkpoint file."""
    return os.path.isfile(source) and source.endswith(_SINGLE_FILE_SUFFIXES)


def check_noise_schedule(config: Dict[str, Any]) -> None:
    """Raise ValueError unless ``config`` is SD1.5's DDPM schedule, which eq. 10 of DCAC assumes."""
    wrong = []
    for key, expected in _REQUIRED_SCHEDULE.items():
        value = config.get(key)
        if isinstance(expected, float):
            matches = isinstance(value, (int, float)) and math.isclose(value, expected, rel_tol=1e-6)
        else:
            matches = value == expected
        if not matches:
            wrong.append(f"{key}={value!r} (need {expected!r})")
    if wrong:
        raise ValueError("DCAC needs the Stable Diffusion v1.5 noise schedule; got " + ", ".join(wrong) + ".")


def _frozen(module: nn.Module) -> nn.Module:
    """``module`` with every weight frozen; callers decide later what trains."""
    return module.requires_grad_(False)


def _frozen_vae(vae: AutoencoderKL) -> AutoencoderKL:
    """The VAE frozen and in eval mode: DCAC only encodes with it (paper 4.2)."""
    return vae.requires_grad_(False).eval()


def _scheduler_from_config(config: Dict[str, Any]) -> DDPMScheduler:
    """A DDPMScheduler after checking that its schedule is the one DCAC needs."""
    check_noise_schedule(config)
    return DDPMScheduler.from_config(config)


def _random_unet(config_source: str) -> UNet2DConditionModel:
    """A randomly initialised U-Net from the config at ``config_source`` ("train from scratch")."""
    return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_source, subfolder="unet"))


@contextmanager
def _weights_errors_explained(source: str) -> Iterator[None]:
    """Turn "not found / cannot reach / invalid id" errors into a DiffusionWeightsError with the fix."""
    try:
        yield
    except (OSError, ValueError) as error:
        raise DiffusionWeightsError(_download_hint(source) + f" Cause: {_first_line(error)}") from error


def _load_from_diffusers_layout(source: str, random_unet: bool) -> RawComponents:
    """U-Net, VAE and scheduler config of a diffusers folder or hub repo id (sub-folders)."""
    unet = _random_unet(source) if random_unet else UNet2DConditionModel.from_pretrained(source, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae")
    return unet, vae, dict(DDPMScheduler.load_config(source, subfolder="scheduler"))


def _read_checkpoint_file(path: str) -> StateDict:
    """The state dict of an original-format SD checkpoint, read once and without unpickling code.

    ``.safetensors`` goes through safetensors; ``.ckpt`` through ``torch.load(weights_only=True)``.
    Lightning checkpoints nest the weights under ``state_dict``.
    """
    try:
        if path.endswith(".safetensors"):
            checkpoint = load_file(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, SafetensorError, RuntimeError, ValueError, EOFError) as error:
        raise DiffusionWeightsError(
            f"Cannot read checkpoint file {path}: {_first_line(error)}. " + _download_hint(path)
        ) from error
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    return checkpoint


def _check_ldm_layout(checkpoint: StateDict, path: str) -> None:
    """Fail with the file's name, not a KeyError deep in diffusers, when the layout is not LDM's."""
    for prefix, part in ((_LDM_UNET_PREFIX, "U-Net"), (_LDM_VAE_PREFIX, "VAE")):
        if not any(key.startswith(prefix) for key in checkpoint):
            raise DiffusionWeightsError(
                f"{path} is not an original-format Stable Diffusion v1 checkpoint: no {part} weights "
                f"(keys starting with {prefix!r}). " + _download_hint(path)
            )


def _load_from_single_file(path: str, random_unet: bool) -> RawComponents:
    """U-Net, VAE and scheduler config from one original-format checkpoint (``v1-5-pruned.safetensors``).

    The file is read once; diffusers' single-file loader converts its LDM keys into the
    diffusers U-Net and VAE built from the shipped SD1.5 configs, so nothing is fetched.
    ``extract_ema=True`` picks the EMA U-Net weights when the file holds both (as
    ``v1-5-pruned`` does): those are the weights the diffusers release ships, so both
    sources give the same U-Net. The scheduler config is the shipped SD1.5 one.
    """
    checkpoint = _read_checkpoint_file(path)
    _check_ldm_layout(checkpoint, path)
    single_file_kwargs = {"config": SD15_CONFIG_DIR, "local_files_only": True}
    try:
        if random_unet:
            unet = _random_unet(SD15_CONFIG_DIR)
        else:
            unet = UNet2DConditionModel.from_single_file(
                checkpoint, subfolder="unet", extract_ema=True, **single_file_kwargs
            )
        vae = AutoencoderKL.from_single_file(checkpoint, subfolder="vae", **single_file_kwargs)
    except (KeyError, OSError, ValueError, RuntimeError) as error:
        raise DiffusionWeightsError(
            f"{path} could not be converted from the original Stable Diffusion v1 layout: "
            f"{_first_line(error)}. " + _download_hint(path)
        ) from error
    return unet, vae, dict(DDPMScheduler.load_config(SD15_CONFIG_DIR, subfolder="scheduler"))


def _check_local_source(source: str) -> None:
    """Reject a missing local path, or a folder without the diffusers sub-folders, with the fix."""
    if os.path.isdir(source):
        missing = [name for name in _SUBFOLDERS if not os.path.isdir(os.path.join(source, name))]
        if missing:
            raise DiffusionWeightsError(
                f"{source} has no {', '.join(missing)} sub-folder(s). " + _download_hint(source)
            )
    elif _looks_like_local_path(source):
        raise DiffusionWeightsError(f"No such folder or checkpoint file: {source}. " + _download_hint(source))


def load_diffusion_components(pretrained: str, random_unet: bool = False) -> DiffusionComponents:
    """Load SD1.5's U-Net, VAE and DDPM noise scheduler for DCAC.

    ``pretrained`` is a local diffusers folder, an original-format ``.ckpt`` /
    ``.safetensors`` file, or a Hugging Face repo id. ``random_unet=True`` ("train from
    scratch", paper Table 5) builds the U-Net from its config with random weights; the
    VAE is still loaded. The VAE comes back frozen and in eval mode, the U-Net with every
    weight frozen (:func:`~dcac_plugin.diffusion.adaptation.apply_finetune_mode` decides
    what trains). Raises :class:`DiffusionWeightsError` when the weights cannot be found
    or read, and ValueError when the noise schedule is not SD1.5's.
    """
    if _is_single_file(pretrained):
        unet, vae, scheduler_config = _load_from_single_file(pretrained, random_unet)
    else:
        _check_local_source(pretrained)
        with _weights_errors_explained(pretrained):
            unet, vae, scheduler_config = _load_from_diffusers_layout(pretrained, random_unet)
    noise_scheduler = _scheduler_from_config(scheduler_config)
    return DiffusionComponents(_frozen(unet), _frozen_vae(vae), noise_scheduler)


def _read_configs(source: str) -> Dict[str, Dict[str, Any]]:
    """The unet / vae / scheduler config dicts of a diffusers folder or hub repo (no weights)."""
    return {
        "unet": dict(UNet2DConditionModel.load_config(source, subfolder="unet")),
        "vae": dict(AutoencoderKL.load_config(source, subfolder="vae")),
        "scheduler": dict(DDPMScheduler.load_config(source, subfolder="scheduler")),
    }


def load_diffusion_configs(pretrained: str) -> Dict[str, Dict[str, Any]]:
    """Config dicts ``{'unet', 'vae', 'scheduler'}`` of ``pretrained`` without loading any weight.

    A local folder gives its own json files; a single checkpoint file or any SD1.5 repo id
    (a name containing ``stable-diffusion-v1-5``) the configs shipped with this package;
    another hub id its configs from the hub (cache), else :class:`DiffusionWeightsError`.
    """
    if _is_single_file(pretrained):
        return _read_configs(SD15_CONFIG_DIR)
    _check_local_source(pretrained)
    if not os.path.isdir(pretrained) and "stable-diffusion-v1-5" in pretrained:
        return _read_configs(SD15_CONFIG_DIR)
    with _weights_errors_explained(pretrained):
        return _read_configs(pretrained)


def build_diffusion_architecture(
    configs: Dict[str, Dict[str, Any]], device: Union[str, torch.device] = "meta"
) -> DiffusionComponents:
    """Real-size U-Net and VAE built from ``configs`` on ``device``, without loading weights.

    On the default meta device no memory is allocated and nothing is initialised, so the
    SD1.5 modules are built in well under a second: used to count (trainable) parameters
    of a configuration without downloading anything. Frozen like :func:`load_diffusion_components`.
    """
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
    noise_scheduler = _scheduler_from_config(configs["scheduler"])
    return DiffusionComponents(_frozen(unet), _frozen_vae(vae), noise_scheduler)


def _tiny_settings(seed: int, cross_attention_dim: int) -> Dict[str, int]:
    """The settings a tiny model folder is identified by (written last, read for idempotence)."""
    return {"seed": seed, "cross_attention_dim": cross_attention_dim}


def _tiny_unet(cross_attention_dim: int) -> UNet2DConditionModel:
    """A two-level U-Net with SD's block types: one transformer block per level carries attn1, attn2, ff."""
    return UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def _tiny_vae() -> AutoencoderKL:
    """A VAE with SD's four levels, hence SD's 8x downsampling (128x128 image -> 4x16x16 latent)."""
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=128,
        scaling_factor=0.18215,
    )


def _tiny_model_matches(path: str, settings: Dict[str, int]) -> bool:
    """Whether ``path`` already holds a complete tiny model written with ``settings``."""
    settings_file = os.path.join(path, _TINY_SETTINGS_FILE)
    if not os.path.isfile(settings_file):
        return False
    with open(settings_file) as handle:
        return json.load(handle) == settings


def _write_tiny_model(folder: str, seed: int, cross_attention_dim: int) -> None:
    """Write the tiny U-Net, VAE and SD1.5 scheduler into ``folder``; the settings file goes last."""
    # A forked RNG keeps the weights a function of the seed alone and leaves the caller's RNG alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _tiny_unet(cross_attention_dim).save_pretrained(os.path.join(folder, "unet"))
        _tiny_vae().save_pretrained(os.path.join(folder, "vae"))
    DDPMScheduler.from_pretrained(SD15_CONFIG_DIR, subfolder="scheduler").save_pretrained(
        os.path.join(folder, "scheduler")
    )
    with open(os.path.join(folder, _TINY_SETTINGS_FILE), "w") as handle:
        json.dump(_tiny_settings(seed, cross_attention_dim), handle)


def save_tiny_stable_diffusion(path: str, seed: int = 0, cross_attention_dim: int = 32) -> str:
    """Write a tiny random-init Stable Diffusion in diffusers folder layout at ``path``; return it.

    Used by the tests and the CPU demo in place of SD1.5: same block types and the same
    8x VAE downsampling, tiny widths. Deterministic from ``seed``. Idempotent: a complete
    model with the same settings is kept as is. Written into a temporary sibling folder and
    renamed into place, so a reader never sees a half-written model. A non-empty ``path``
    holding anything else raises FileExistsError rather than being overwritten.
    """
    path = os.path.abspath(path)
    settings = _tiny_settings(seed, cross_attention_dim)
    if _tiny_model_matches(path, settings):
        return path
    if os.path.isdir(path) and os.listdir(path):
        raise FileExistsError(f"{path} exists and is not a tiny Stable Diffusion with settings {settings}.")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tiny-sd-", dir=parent)
    try:
        _write_tiny_model(staging, seed, cross_attention_dim)
        os.replace(staging, path)
    except OSError:
        # Another process may have finished the same model first; theirs is as good as ours.
        if not _tiny_model_matches(path, settings):
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
