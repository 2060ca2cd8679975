"""Where Stable Diffusion v1.5 weights come from, and which copy of the U-Net is used.

The DCAC authors fine-tune the NON-EMA U-Net: they load ``model.diffusion_model.*`` from
``v1-5-pruned.ckpt`` and skip ``model_ema.*`` (the non-EMA weights are the ones meant for
further training). The diffusers release of SD1.5 ships the EMA U-Net as its main weights
and the non-EMA one as the variant ``non_ema``
(``unet/diffusion_pytorch_model.non_ema.safetensors`` / ``.bin``). So, by default
(``dcac.diffusion.ema_weights False``):

* a single original-format file gives its ``model.diffusion_model.*`` U-Net;
* a diffusers folder, or a hub id (read from the Hugging Face cache, downloaded when the
  hub is reachable), gives its ``non_ema`` variant when it has one, else its main weights,
  and says so.

Every choice comes with a one-line description for the run log.
"""
from __future__ import annotations

import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from dcac_config.errors import UserError

from ..utils.hub import cached_file, ensure_hub_cache_writable, file_url, hub_unreachable_reason, repo_url

DEFAULT_PRETRAINED = "stable-diffusion-v1-5/stable-diffusion-v1-5"
NON_EMA_VARIANT = "non_ema"
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors")
SUBFOLDERS = ("unet", "vae", "scheduler")
CONFIG_FILES = {"unet": "unet/config.json", "vae": "vae/config.json", "scheduler": "scheduler/scheduler_config.json"}
# diffusers' weight file names, preferred first (safetensors loads without unpickling).
_WEIGHT_STEM = "diffusion_pytorch_model"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Key prefixes of the original LDM checkpoint layout; LitEma stores the EMA copy of
# ``model.X.Y`` under ``model_ema.XY`` (the dots of the parameter name removed).
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_EMA_PREFIX = "model_ema."

StateDict = Dict[str, torch.Tensor]


class DiffusionWeightsError(UserError, RuntimeError):
    """Stable Diffusion weights could not be found or read; the message says how to fix it."""


class DiffusersFolder(NamedTuple):
    """A diffusers folder to load, the U-Net variant to take from it, and what that is."""

    path: str
    unet_variant: Optional[str]
    description: str


def download_hint(source: str) -> str:
    """The fix appended to every weights error: what to fetch and which key to set."""
    return (
        f"Could not load Stable Diffusion from {source!r}. Download the diffusers folder of "
        f"{DEFAULT_PRETRAINED} (unet/, vae/, scheduler/) or the single file "
        f"v1-5-pruned.safetensors ({file_url(DEFAULT_PRETRAINED, 'v1-5-pruned.safetensors')}), then set "
        "dcac.diffusion.pretrained /path (the folder or the file)."
    )


def looks_like_local_path(source: str) -> bool:
    """Whether ``source`` was meant as a filesystem path rather than a hub id ``owner/name``."""
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or source.endswith(SINGLE_FILE_SUFFIXES)
        or source.count("/") != 1
    )


def is_single_file(source: str) -> bool:
    """Whether ``source`` is an existing original-format checkpoint file."""
    return os.path.isfile(source) and source.endswith(SINGLE_FILE_SUFFIXES)


def weight_files(subfolder: str, variant: Optional[str] = None) -> Tuple[str, ...]:
    """diffusers' weight file names of ``subfolder`` (optionally of a variant), preferred first."""
    infix = f".{variant}" if variant else ""
    return tuple(f"{subfolder}/{_WEIGHT_STEM}{infix}{suffix}" for suffix in _WEIGHT_SUFFIXES)


def _has_any(folder: str, relative_paths: Sequence[str]) -> bool:
    return any(os.path.isfile(os.path.join(folder, path)) for path in relative_paths)


def _is_complete(folder: str, unet_variant: Optional[str]) -> bool:
    """Whether ``folder`` holds every config and the weights DCAC loads (U-Net of ``unet_variant``)."""
    return (all(os.path.isfile(os.path.join(folder, path)) for path in CONFIG_FILES.values())
            and _has_any(folder, weight_files("unet", unet_variant)) and _has_any(folder, weight_files("vae")))


def choose_unet_variant(folder: str, ema_weights: bool) -> Tuple[Optional[str], str]:
    """The U-Net variant to load from a diffusers folder, and a description for the log."""
    if ema_weights:
        return None, "EMA U-Net (the main unet/diffusion_pytorch_model.* weights; dcac.diffusion.ema_weights True)"
    if _has_any(folder, weight_files("unet", NON_EMA_VARIANT)):
        return NON_EMA_VARIANT, "non-EMA U-Net (unet/diffusion_pytorch_model.non_ema.*), as the authors fine-tune"
    return None, ("main U-Net weights unet/diffusion_pytorch_model.* (the folder has no non_ema variant; in the "
                  "SD1.5 release the main weights are the EMA copy)")


def local_diffusers_folder(folder: str, ema_weights: bool) -> DiffusersFolder:
    """A local diffusers folder, checked for its sub-folders, and its U-Net variant."""
    missing = [name for name in SUBFOLDERS if not os.path.isdir(os.path.join(folder, name))]
    if missing:
        raise DiffusionWeightsError(f"{folder} has no {', '.join(missing)} sub-folder(s). " + download_hint(folder))
    variant, description = choose_unet_variant(folder, ema_weights)
    return DiffusersFolder(folder, variant, description)


def cached_snapshot(repo_id: str) -> Optional[str]:
    """The folder of ``repo_id``'s snapshot in the Hugging Face cache (hub layout), or None."""
    path = cached_file(repo_id, CONFIG_FILES["unet"])
    return path[: -len(CONFIG_FILES["unet"])].rstrip("/" + os.sep) if path else None


def _wanted_files(available: Sequence[str], ema_weights: bool) -> List[str]:
    """The files of a hub repository DCAC downloads: configs, VAE weights, one U-Net copy."""
    present = set(available)

    def first(candidates: Sequence[str]) -> List[str]:
        return [next(name for name in candidates if name in present)] if present & set(candidates) else []

    unet = [] if ema_weights else first(weight_files("unet", NON_EMA_VARIANT))
    return sorted(CONFIG_FILES.values()) + first(weight_files("vae")) + (unet or first(weight_files("unet")))


def _download(repo_id: str, ema_weights: bool) -> str:
    """Download what DCAC needs of ``repo_id`` into the Hugging Face cache; returns the snapshot folder."""
    from huggingface_hub import HfApi, snapshot_download

    ensure_hub_cache_writable(f"Stable Diffusion {repo_id!r}", download_hint(repo_id))
    print(f"Downloading Stable Diffusion from the Hugging Face Hub: {repo_id} (unet, vae, scheduler) ...")
    try:
        files = _wanted_files(HfApi().list_repo_files(repo_id), ema_weights)
        return snapshot_download(repo_id, allow_patterns=files)
    except Exception as error:  # unknown or gated repository, interrupted download, full disk ...
        raise DiffusionWeightsError(f"Downloading {repo_id!r} failed ({type(error).__name__}: "
                                    f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}). "
                                    + download_hint(repo_id)) from error


def _offline_error(repo_id: str, reason: str, ema_weights: bool) -> DiffusionWeightsError:
    """One line: what is missing, why nothing was downloaded, the files to fetch and the key to set."""
    unet = weight_files("unet", None if ema_weights else NON_EMA_VARIANT)[0]
    files = [CONFIG_FILES["unet"], unet, CONFIG_FILES["vae"], weight_files("vae")[0], CONFIG_FILES["scheduler"]]
    return DiffusionWeightsError(
        f"Stable Diffusion {repo_id!r} is not in the local Hugging Face cache and {reason}. Download "
        f"{', '.join(files)} from {repo_url(repo_id)} into one folder, keeping their sub-folders (or the single "
        f"file {file_url(DEFAULT_PRETRAINED, 'v1-5-pruned.safetensors')}) and set dcac.diffusion.pretrained "
        "/path/to/that/folder-or-file.")


def hub_diffusers_folder(repo_id: str, ema_weights: bool) -> DiffusersFolder:
    """The snapshot folder of hub repository ``repo_id``: from the cache, else downloaded.

    With the hub unreachable (``HF_HUB_OFFLINE`` or one failed short request) a cached
    snapshot that lacks the non-EMA variant is used with its main weights, and anything
    else missing is one clear :class:`DiffusionWeightsError`, without retries.
    """
    wanted_variant = None if ema_weights else NON_EMA_VARIANT
    snapshot = cached_snapshot(repo_id)
    if snapshot and _is_complete(snapshot, wanted_variant):
        return local_diffusers_folder(snapshot, ema_weights)
    reason = hub_unreachable_reason()
    if reason is None:
        return local_diffusers_folder(_download(repo_id, ema_weights), ema_weights)
    if snapshot and _is_complete(snapshot, None):
        variant, description = choose_unet_variant(snapshot, ema_weights)
        return DiffusersFolder(snapshot, variant, f"{description}; the non_ema variant is not cached and {reason}")
    raise _offline_error(repo_id, reason, ema_weights)


def _ema_key(unet_key: str) -> str:
    """LitEma's name of the EMA copy of ``model.diffusion_model.<name>``: ``model_ema.diffusion_model<name without dots>``."""
    return LDM_EMA_PREFIX + unet_key[len("model."):].replace(".", "")


def select_unet_copy(checkpoint: StateDict, ema_weights: bool, path: str) -> Tuple[StateDict, str]:
    """The original-format ``checkpoint`` with exactly one U-Net under ``model.diffusion_model.*``.

    ``v1-5-pruned`` holds two copies: the non-EMA weights (``model.diffusion_model.*``, what the
    authors fine-tune, the default) and the EMA weights (``model_ema.*``). The EMA entries are
    dropped, or, with ``ema_weights``, moved onto the U-Net names. A file with one copy
    (``v1-5-pruned-emaonly``, whose one copy is the EMA one) is used as it is, and the
    description says so. The choice is made here rather than by diffusers, whose converter
    only looks for EMA weights when a file has more than 100 of them.
    """
    unet_keys = [key for key in checkpoint if key.startswith(LDM_UNET_PREFIX)]
    rest = {key: value for key, value in checkpoint.items()
            if not key.startswith((LDM_UNET_PREFIX, LDM_EMA_PREFIX))}
    has_ema_copy = any(_ema_key(key) in checkpoint for key in unet_keys)
    name = os.path.basename(path)
    if not has_ema_copy:
        return checkpoint, (f"the only U-Net copy in {name} (model.diffusion_model.*; it holds no model_ema.* copy, "
                            "and in v1-5-pruned-emaonly this copy is the EMA one)")
    if not ema_weights:
        return {**rest, **{key: checkpoint[key] for key in unet_keys}}, \
            f"non-EMA U-Net (model.diffusion_model.*) of {name}, as the authors fine-tune"
    missing = [key for key in unet_keys if _ema_key(key) not in checkpoint]
    if missing:
        raise DiffusionWeightsError(f"{path} has an incomplete EMA U-Net: no {_ema_key(missing[0])} "
                                    f"(and {len(missing) - 1} more). Set dcac.diffusion.ema_weights False.")
    return {**rest, **{key: checkpoint[_ema_key(key)] for key in unet_keys}}, \
        f"EMA U-Net (model_ema.*) of {name} (dcac.diffusion.ema_weights True)"


__all__ = ["CONFIG_FILES", "DEFAULT_PRETRAINED", "DiffusersFolder", "DiffusionWeightsError", "LDM_EMA_PREFIX",
           "LDM_UNET_PREFIX", "NON_EMA_VARIANT", "SINGLE_FILE_SUFFIXES", "SUBFOLDERS", "cached_snapshot",
           "choose_unet_variant", "download_hint", "hub_diffusers_folder", "is_single_file", "local_diffusers_folder",
           "looks_like_local_path", "select_unet_copy", "weight_files"]
