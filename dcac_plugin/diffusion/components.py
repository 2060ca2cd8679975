"""Stable Diffusion v1.5 components for DCAC (paper, section 4.2): U-Net, VAE, DDPM schedule.

Three weight sources are understood (see :mod:`.sources` for how they are found and which
copy of the U-Net each gives), all ending in the same diffusers modules:

* a local diffusers folder with ``unet/``, ``vae/`` and ``scheduler/`` sub-folders, such as
  the published SD1.5 release (diffusers-0.6.0 configs, a PNDMScheduler config without
  ``prediction_type``, a VAE config without ``scaling_factor``: diffusers' defaults apply);
* one original-format (CompVis / LDM) checkpoint file, ``.ckpt`` or ``.safetensors``,
  converted by diffusers' single-file loader against the SD1.5 configs shipped in
  ``sd15/`` (the published ones), so it works offline;
* a Hugging Face repo id, read from the local hub cache, or downloaded when the hub is
  reachable.

The U-Net fine-tuned is the non-EMA copy, as the authors'; ``ema_weights=True`` picks the
EMA copy. Offline or on a wrong path, :class:`DiffusionWeightsError` says what to download
and which config key to set.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..utils.file_kinds import not_a_torch_file
from ..utils.hub import hub_unreachable_reason
from .config_checks import SD15_CONFIG_DIR, read_config_file, read_folder_configs
from .sources import (CONFIG_FILES, LDM_UNET_PREFIX, DiffusersFolder, DiffusionWeightsError, cached_snapshot,
                      download_hint, hub_diffusers_folder, is_single_file, local_diffusers_folder,
                      looks_like_local_path, select_unet_copy)

_LDM_VAE_PREFIX = "first_stage_model."
# The DDPM schedule DCAC trains with (paper 5.2 / SD1.5): anything else changes eq. 10.
SD15_NUM_TRAIN_TIMESTEPS = 1000
SD15_BETA_START, SD15_BETA_END = 0.00085, 0.012
SD15_PREDICTION_TYPE = "epsilon"
_TINY_SETTINGS_FILE = "dcac_tiny_settings.json"

StateDict = Dict[str, torch.Tensor]
# U-Net, VAE, the scheduler config, and which U-Net weights were loaded.
RawComponents = Tuple[UNet2DConditionModel, AutoencoderKL, Dict[str, Any], str]


class DiffusionComponents(NamedTuple):
    """The three parts of Stable Diffusion that DCAC's denoising loss needs.

    ``description`` says where the weights came from and which U-Net copy was loaded.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    noise_scheduler: DDPMScheduler
    description: str = ""


def _first_line(error: BaseException) -> str:
    """First line of an exception's message, so a chained hint stays readable."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0].rstrip('.') if lines else ''}"


def sd15_betas() -> torch.Tensor:
    """SD1.5's betas: "scaled_linear", i.e. linear in sqrt(beta) from 0.00085 to 0.012 over 1000 steps."""
    return torch.linspace(SD15_BETA_START ** 0.5, SD15_BETA_END ** 0.5, SD15_NUM_TRAIN_TIMESTEPS,
                          dtype=torch.float64, device="cpu") ** 2


def _ddpm_scheduler(config: Mapping[str, Any]) -> DDPMScheduler:
    """A DDPMScheduler from ``config``, with diffusers' defaults for the keys it lacks.

    ``_use_default_values`` (diffusers' note of which keys were defaults when a config was
    saved) is dropped: a value the config states is the value meant.
    """
    # The schedule's tables live on the CPU (diffusers moves them per call), also when the
    # caller builds modules under a meta-device context.
    with torch.device("cpu"):
        return DDPMScheduler.from_config({key: value for key, value in config.items()
                                          if key != "_use_default_values"})


def check_noise_schedule(config: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``config`` gives SD1.5's DDPM schedule, which eq. 10 of DCAC assumes.

    ``config`` is a scheduler config as written (the published SD1.5 one is a diffusers-0.6.0
    PNDMScheduler config without ``prediction_type``) or as a scheduler holds it: diffusers'
    defaults are applied first (epsilon prediction), then the betas the scheduler actually
    computes are compared with SD1.5's, so a schedule written differently but equal passes,
    and other betas (schedule, range, trained betas, zero-SNR rescaling), another number of
    steps or another prediction type are refused.
    """
    try:
        scheduler = _ddpm_scheduler(config)
    except NotImplementedError:  # diffusers' answer to a beta_schedule it does not know
        raise ValueError(f"DCAC needs the Stable Diffusion v1.5 noise schedule; the scheduler config's beta_schedule "
                         f"{config.get('beta_schedule')!r} is none that diffusers' DDPMScheduler knows (need "
                         "'scaled_linear').") from None
    except (ValueError, TypeError) as err:  # a malformed value
        raise ValueError(f"DCAC needs the Stable Diffusion v1.5 noise schedule; this scheduler config does not give a "
                         f"DDPM schedule at all: {str(err).splitlines()[0]}.") from None
    resolved = scheduler.config
    wrong = []
    if resolved.num_train_timesteps != SD15_NUM_TRAIN_TIMESTEPS:
        wrong.append(f"num_train_timesteps={resolved.num_train_timesteps!r} (need {SD15_NUM_TRAIN_TIMESTEPS})")
    elif not torch.allclose(scheduler.betas.double(), sd15_betas(), rtol=1e-5, atol=0.0):
        wrong.append(f"betas from beta_schedule={resolved.beta_schedule!r}, beta_start={resolved.beta_start!r}, "
                     f"beta_end={resolved.beta_end!r}, trained_betas={'given' if resolved.trained_betas else None}, "
                     f"rescale_betas_zero_snr={resolved.rescale_betas_zero_snr!r} (need scaled_linear "
                     f"{SD15_BETA_START} -> {SD15_BETA_END})")
    if resolved.prediction_type != SD15_PREDICTION_TYPE:
        wrong.append(f"prediction_type={resolved.prediction_type!r} (need {SD15_PREDICTION_TYPE!r})")
    if wrong:
        raise ValueError("DCAC needs the Stable Diffusion v1.5 noise schedule; got " + "; ".join(wrong) + ".")


def _frozen(module: nn.Module) -> nn.Module:
    """``module`` with every weight frozen; callers decide later what trains."""
    return module.requires_grad_(False)


def _frozen_vae(vae: AutoencoderKL) -> AutoencoderKL:
    """The VAE frozen and in eval mode: DCAC only encodes with it (paper 4.2)."""
    return vae.requires_grad_(False).eval()


def _scheduler_from_config(config: Mapping[str, Any], source: Optional[str] = None) -> DDPMScheduler:
    """A DDPMScheduler after checking that its schedule is the one DCAC needs; otherwise a
    :class:`DiffusionWeightsError` naming the scheduler config of ``source`` (a folder) when known.

    The published SD1.5 config names PNDMScheduler; DCAC trains with the same betas through
    DDPM's ``add_noise`` (eq. 10), so only the schedule is taken from it.
    """
    try:
        check_noise_schedule(config)
    except ValueError as err:
        where = f" ({os.path.join(source, CONFIG_FILES['scheduler'])})" if source else ""
        raise DiffusionWeightsError(f"{err} Use the scheduler config of Stable Diffusion v1.5{where}.") from None
    return _ddpm_scheduler(config)


def _random_unet(config_source: str) -> UNet2DConditionModel:
    """A randomly initialised U-Net from the config at ``config_source`` ("train from scratch")."""
    return UNet2DConditionModel.from_config(read_config_file(config_source, "unet"))


@contextmanager
def _weights_errors_explained(source: str) -> Iterator[None]:
    """Turn "not found / cannot read" errors into a DiffusionWeightsError with the fix."""
    try:
        yield
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        if isinstance(error, DiffusionWeightsError):
            raise
        raise DiffusionWeightsError(download_hint(source) + f" Cause: {_first_line(error)}") from error


def _load_from_diffusers_folder(folder: DiffusersFolder, random_unet: bool) -> RawComponents:
    """U-Net (the chosen variant), VAE and scheduler config of a local diffusers folder."""
    path = folder.path
    # Configs first: a broken one is named here, an absurd size refused before any allocation.
    configs = read_folder_configs(path)
    with _weights_errors_explained(path):
        if random_unet:
            unet, description = _random_unet(path), "random U-Net (train from scratch)"
        else:
            with _mismatch_explained(path, "unet"):
                unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", variant=folder.unet_variant)
            description = folder.description
        with _mismatch_explained(path, "vae"):
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
    return unet, vae, configs["scheduler"], description


@contextmanager
def _mismatch_explained(folder: str, part: str) -> Iterator[None]:
    """Weights that do not fit their own config (one of the two edited or replaced) are named as
    such, not as weights to download again."""
    try:
        yield
    except (ValueError, RuntimeError) as error:
        if "shape" not in str(error) and "size mismatch" not in str(error):
            raise
        shapes = re.search(r"(\S+) expected shape torch\.Size\((\[.*?\])\), but got torch\.Size\((\[.*?\])\)",
                           str(error))
        detail = (f"{shapes.group(1)} is {shapes.group(3)} in the weights, {shapes.group(2)} by the config" if shapes
                  else _first_line(error))
        raise DiffusionWeightsError(
            f"The {part} weights in {os.path.join(folder, part)} do not fit its config "
            f"{os.path.join(folder, CONFIG_FILES[part])} ({detail}): the two must come from the same model. Restore "
            "the config that came with the weights, or use a complete Stable Diffusion v1.5 folder.") from None


def _read_checkpoint_file(path: str) -> StateDict:
    """The state dict of an original-format SD checkpoint, read once and without unpickling code.

    ``.safetensors`` goes through safetensors; ``.ckpt`` through ``torch.load(weights_only=True)``.
    Lightning checkpoints nest the weights under ``state_dict``.
    """
    kind = None if path.endswith(".safetensors") else not_a_torch_file(path)
    if kind:
        raise DiffusionWeightsError(f"Checkpoint file {path} is not a PyTorch checkpoint: it is {kind}. "
                                    + download_hint(path))
    try:
        if path.endswith(".safetensors"):
            checkpoint = load_file(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, SafetensorError, RuntimeError, ValueError, EOFError) as error:
        raise DiffusionWeightsError(
            f"Cannot read checkpoint file {path}: {_first_line(error)}. " + download_hint(path)
        ) from error
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    return checkpoint


def _check_ldm_layout(checkpoint: StateDict, path: str) -> None:
    """Fail with the file's name, not a KeyError deep in diffusers, when the layout is not LDM's."""
    for prefix, part in ((LDM_UNET_PREFIX, "U-Net"), (_LDM_VAE_PREFIX, "VAE")):
        if not any(key.startswith(prefix) for key in checkpoint):
            raise DiffusionWeightsError(
                f"{path} is not an original-format Stable Diffusion v1 checkpoint: no {part} weights "
                f"(keys starting with {prefix!r}). " + download_hint(path)
            )


def _load_from_single_file(path: str, random_unet: bool, ema_weights: bool, config_dir: str) -> RawComponents:
    """U-Net, VAE and scheduler config from one original-format checkpoint (``v1-5-pruned.safetensors``).

    The file is read once; :func:`~.sources.select_unet_copy` keeps the one U-Net copy wanted
    (non-EMA by default, as the authors), and diffusers' single-file loader converts the LDM
    keys into the U-Net and VAE built from the configs in ``config_dir`` (the published SD1.5
    ones), so nothing is fetched. The scheduler config is the one in ``config_dir``.
    """
    checkpoint = _read_checkpoint_file(path)
    _check_ldm_layout(checkpoint, path)
    checkpoint, description = select_unet_copy(checkpoint, ema_weights, path)
    single_file_kwargs = {"config": config_dir, "local_files_only": True}
    try:
        if random_unet:
            unet, description = _random_unet(config_dir), "random U-Net (train from scratch)"
        else:
            unet = UNet2DConditionModel.from_single_file(checkpoint, subfolder="unet", **single_file_kwargs)
        vae = AutoencoderKL.from_single_file(checkpoint, subfolder="vae", **single_file_kwargs)
    except (KeyError, OSError, ValueError, RuntimeError) as error:
        raise DiffusionWeightsError(
            f"{path} could not be converted from the original Stable Diffusion v1 layout: "
            f"{_first_line(error)}. " + download_hint(path)
        ) from error
    return unet, vae, read_config_file(config_dir, "scheduler"), description


def _diffusers_folder_of(source: str, ema_weights: bool) -> DiffusersFolder:
    """A local folder as it is; a hub id through the cache (or a download); a wrong path named."""
    if os.path.isdir(source):
        return local_diffusers_folder(source, ema_weights)
    if looks_like_local_path(source):
        raise DiffusionWeightsError(f"No such folder or checkpoint file: {source}. " + download_hint(source))
    return hub_diffusers_folder(source, ema_weights)


def load_diffusion_components(pretrained: str, random_unet: bool = False, ema_weights: bool = False,
                              single_file_config: str = SD15_CONFIG_DIR) -> DiffusionComponents:
    """Load SD1.5's U-Net, VAE and DDPM noise scheduler for DCAC.

    ``pretrained`` is a local diffusers folder, an original-format ``.ckpt`` /
    ``.safetensors`` file (converted with the configs in ``single_file_config``), or a
    Hugging Face repo id. The U-Net is the non-EMA copy when the source has one (the
    authors' choice), the EMA copy with ``ema_weights``; ``description`` of the result says
    which was loaded. ``random_unet=True`` ("train from scratch", paper Table 5) builds the
    U-Net from its config with random weights; the VAE is still loaded. The VAE comes back
    frozen and in eval mode, the U-Net with every weight frozen
    (:func:`~dcac_plugin.diffusion.adaptation.apply_finetune_mode` decides what trains).
    Raises :class:`DiffusionWeightsError` when the weights cannot be found or read, and
    ValueError when the noise schedule is not SD1.5's.
    """
    if is_single_file(pretrained):
        unet, vae, scheduler_config, description = _load_from_single_file(
            pretrained, random_unet, ema_weights, single_file_config)
        source, config_folder = f"single file {pretrained}", single_file_config
    else:
        folder = _diffusers_folder_of(pretrained, ema_weights)
        unet, vae, scheduler_config, description = _load_from_diffusers_folder(folder, random_unet)
        source = pretrained if folder.path == pretrained else f"{pretrained} ({folder.path})"
        config_folder = folder.path
    noise_scheduler = _scheduler_from_config(scheduler_config, config_folder)
    return DiffusionComponents(_frozen(unet), _frozen_vae(vae), noise_scheduler, f"{source}: {description}")


def _read_configs(source: str) -> Dict[str, Dict[str, Any]]:
    """The unet / vae / scheduler config dicts of a diffusers folder or hub repo (no weights)."""
    if os.path.isdir(source):
        return {part: read_config_file(source, part) for part in CONFIG_FILES}
    return {
        "unet": dict(UNet2DConditionModel.load_config(source, subfolder="unet")),
        "vae": dict(AutoencoderKL.load_config(source, subfolder="vae")),
        "scheduler": dict(DDPMScheduler.load_config(source, subfolder="scheduler")),
    }


def load_diffusion_configs(pretrained: str) -> Dict[str, Dict[str, Any]]:
    """Config dicts ``{'unet', 'vae', 'scheduler'}`` of ``pretrained`` without loading any weight.

    A local folder gives its own json files; a single checkpoint file or any SD1.5 repo id
    (a name containing ``stable-diffusion-v1-5``) the configs shipped with this package;
    another hub id its configs from the hub cache, or from the hub when it is reachable,
    else :class:`DiffusionWeightsError` at once.
    """
    if is_single_file(pretrained):
        return _read_configs(SD15_CONFIG_DIR)
    if os.path.isdir(pretrained):
        return _read_configs(local_diffusers_folder(pretrained, ema_weights=True).path)
    if looks_like_local_path(pretrained):
        raise DiffusionWeightsError(f"No such folder or checkpoint file: {pretrained}. " + download_hint(pretrained))
    if "stable-diffusion-v1-5" in pretrained:
        return _read_configs(SD15_CONFIG_DIR)
    snapshot = cached_snapshot(pretrained)
    if snapshot and all(os.path.isfile(os.path.join(snapshot, path)) for path in CONFIG_FILES.values()):
        return _read_configs(snapshot)
    reason = hub_unreachable_reason()
    if reason:
        raise DiffusionWeightsError(f"The configs of {pretrained!r} are not in the local Hugging Face cache and "
                                    f"{reason}. " + download_hint(pretrained))
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
