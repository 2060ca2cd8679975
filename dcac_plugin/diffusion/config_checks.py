"""The configs of a diffusers folder, read and checked before anything is built or loaded.

diffusers reports a broken config far from its cause: a file that is not JSON as a failed
download ("couldn't connect to huggingface.co") or a generic load error, and a U-Net config with
absurd sizes only once it tries to allocate the weights (a 160 GB allocation, then "download
SD1.5"). Here each config is parsed from its file (naming the file, line and column), the
modules it describes are built on the meta device (no memory: a wrong field is named with its
file), and their parameters are counted so that a model larger than this machine's free memory
is refused with its size before anything is allocated.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import torch

from ..utils.hub import file_url
from .sources import CONFIG_FILES, DEFAULT_PRETRAINED, DiffusionWeightsError

# Weights are loaded in float32 before any cast: 4 bytes a parameter.
BYTES_PER_PARAMETER = 4
# The published SD1.5 configs, shipped with the package (what sizes are compared with).
SD15_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sd15")
_RESTORE = "restore it from the Stable Diffusion v1.5 release ({url})"


def _restore_hint(part: str) -> str:
    return _RESTORE.format(url=file_url(DEFAULT_PRETRAINED, CONFIG_FILES[part]))


def read_config_file(folder: str, part: str) -> Dict[str, Any]:
    """The config dict of ``part`` (unet, vae, scheduler) of the diffusers folder ``folder``."""
    path = os.path.join(folder, CONFIG_FILES[part])
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except FileNotFoundError:
        raise DiffusionWeightsError(f"Stable Diffusion folder {folder} has no {CONFIG_FILES[part]}: "
                                    f"{_restore_hint(part)}, or set dcac.diffusion.pretrained to a complete "
                                    "folder.") from None
    except json.JSONDecodeError as err:
        raise DiffusionWeightsError(f"Stable Diffusion config {path} is not valid JSON (line {err.lineno}, column "
                                    f"{err.colno}: {err.msg}). Fix it there, or {_restore_hint(part)}.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DiffusionWeightsError(f"Cannot read Stable Diffusion config {path} ({err}). Fix the file, or "
                                    f"{_restore_hint(part)}.") from None
    if not isinstance(config, dict):
        raise DiffusionWeightsError(f"Stable Diffusion config {path} holds a JSON {type(config).__name__}, not an "
                                    f"object of settings. Fix it, or {_restore_hint(part)}.")
    return config


def available_memory() -> Optional[int]:
    """Bytes of memory this machine can still give (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def meta_module(part: str, config: Dict[str, Any], path: str) -> torch.nn.Module:
    """The U-Net or VAE ``config`` describes, on the meta device (no memory, no initialisation)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    model_class = UNet2DConditionModel if part == "unet" else AutoencoderKL
    try:
        with torch.device("meta"):
            return model_class.from_config(config)
    except Exception as err:  # a field of the wrong type or value: diffusers fails in any of many ways
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DiffusionWeightsError(f"Stable Diffusion config {path} does not describe a {model_class.__name__} "
                                    f"({type(err).__name__}: {first}). Fix it, or {_restore_hint(part)}.") from None


def parameter_counts(folder: str, configs: Dict[str, Dict[str, Any]]) -> Dict[str, int]:
    """The parameters of the U-Net and the VAE that ``configs`` (read from ``folder``) describe."""
    return {part: sum(p.numel() for p in meta_module(part, configs[part], os.path.join(folder, CONFIG_FILES[part]))
                      .parameters())
            for part in ("unet", "vae")}


def check_model_configs(folder: str, configs: Dict[str, Dict[str, Any]]) -> None:
    """The U-Net and VAE of ``configs`` (read from ``folder``) can be built and fit in memory."""
    counts = parameter_counts(folder, configs)
    total, free = sum(counts.values()), available_memory()
    if free is None or total * BYTES_PER_PARAMETER <= free:
        return
    sd15 = sum(parameter_counts(SD15_CONFIG_DIR, {part: read_config_file(SD15_CONFIG_DIR, part)
                                                  for part in ("unet", "vae")}).values())
    raise DiffusionWeightsError(
        f"The Stable Diffusion configs in {folder} describe {total / 1e9:.1f} billion parameters (unet "
        f"{counts['unet'] / 1e6:,.0f}M, vae {counts['vae'] / 1e6:,.0f}M: {total * BYTES_PER_PARAMETER / 1e9:.1f} GB "
        f"in float32), more than the {free / 1e9:.1f} GB of memory free here; SD1.5 has {sd15 / 1e9:.2f} billion. "
        f"Check the sizes in {os.path.join(folder, CONFIG_FILES['unet'])} (block_out_channels, layers_per_block, "
        f"...), or {_restore_hint('unet')}.")


def read_folder_configs(folder: str) -> Dict[str, Dict[str, Any]]:
    """The unet / vae / scheduler configs of diffusers folder ``folder``, read and checked:
    valid JSON, modules that can be built, a size that fits this machine's memory."""
    configs = {part: read_config_file(folder, part) for part in CONFIG_FILES}
    check_model_configs(folder, configs)
    return configs


__all__ = ["available_memory", "check_model_configs", "parameter_counts", "read_config_file", "read_folder_configs"]
