"""Where CLIP image-tower weights come from, and how they are read.

``dcac.clip_weights`` is a local file (OpenAI's TorchScript ``ViT-B-16.pt``, an open_clip
checkpoint, a state dict, safetensors) or an open_clip pretrained tag (``openai``). A tag
is looked up in the local caches first (the Hugging Face cache open_clip downloads into,
and open_clip's own cache of OpenAI's files); only when it is in neither is anything
downloaded, and when the hub cannot be reached (``HF_HUB_OFFLINE`` or one short failed
request) the error comes at once, naming the file to download and the key to set.
"""
from __future__ import annotations

import os
import zipfile
from typing import Dict, List, Optional

import open_clip
import torch

from dcac_config.errors import UserError

from ..utils.file_kinds import not_a_torch_file
from ..utils.hub import cached_file, ensure_hub_cache_writable, file_url, hub_unreachable_reason

# open_clip's file names on the hub, safetensors first (as open_clip itself prefers).
_OPEN_CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".tar")


class ClipWeightsError(UserError, RuntimeError):
    """CLIP weights could not be read; the message says what to download and where to point."""


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


_WEIGHTS_FIX = ("Set dcac.clip_weights to OpenAI's ViT-B-16.pt, an open_clip checkpoint or a state dict (.pt, .pth, "
                ".bin, .safetensors), or to an open_clip tag such as openai")


def _read_state_dict_file(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as err:
            raise ClipWeightsError(f"Cannot read CLIP weights from {path}: not a complete safetensors file "
                                   f"({err}). {_WEIGHTS_FIX}.") from None
    kind = not_a_torch_file(path)
    if kind:
        raise ClipWeightsError(f"dcac.clip_weights {path} is not a weights file: it is {kind}. {_WEIGHTS_FIX}.")
    if _is_torchscript_archive(path):
        # OpenAI's released ViT-B-16.pt is a TorchScript archive, not a pickle.
        return torch.jit.load(path, map_location="cpu").state_dict()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused or corrupt file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClipWeightsError(f"Cannot read CLIP weights from {path}: {first}. {_WEIGHTS_FIX}.") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(torch.is_tensor(value) for value in state.values()):
        raise ClipWeightsError(f"dcac.clip_weights {path} holds no tensors (a {type(state).__name__}"
                               f"{' of ' + ', '.join(list(state)[:4]) if isinstance(state, dict) else ''}). "
                               f"{_WEIGHTS_FIX}.")
    return state


def visual_state_dict(state: dict) -> dict:
    """The image-tower entries of a CLIP state dict, with OpenAI's visual key names.

    Accepts a full CLIP state dict (``visual.*``), one saved from DataParallel
    (``module.visual.*``), or an image tower alone.
    """
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        return {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    return dict(state)


def _hub_location(pretrained_cfg: Dict) -> Optional[tuple]:
    """(repo id, file names) of a tag's open_clip checkpoint on the hub, or None."""
    hf_hub = pretrained_cfg.get("hf_hub", "")
    if not hf_hub:
        return None
    # open_clip's convention: 'org/name/file' names a file, 'org/name/' the default ones.
    repo_id, filename = os.path.split(hf_hub)
    return repo_id, (filename,) if filename else _OPEN_CLIP_HUB_FILES


def _url_cache_path(pretrained_cfg: Dict) -> Optional[str]:
    """Where open_clip keeps a tag's file downloaded from its URL (OpenAI's ``ViT-B-16.pt``)."""
    url = pretrained_cfg.get("url", "")
    return os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)) if url else None


def _cached_tag_file(pretrained_cfg: Dict) -> Optional[str]:
    """A tag's weight file already on this machine, in the Hugging Face cache or open_clip's own."""
    location = _hub_location(pretrained_cfg)
    if location is not None:
        repo_id, files = location
        for filename in files:
            path = cached_file(repo_id, filename)
            if path:
                return path
    path = _url_cache_path(pretrained_cfg)
    return path if path and os.path.isfile(path) else None


def _download_addresses(pretrained_cfg: Dict) -> List[str]:
    """Where a tag's weights can be downloaded by hand."""
    addresses = []
    location = _hub_location(pretrained_cfg)
    if location is not None:
        repo_id, files = location
        addresses.append(file_url(repo_id, files[-1]))
    if pretrained_cfg.get("url"):
        addresses.append(pretrained_cfg["url"])
    return addresses


def resolve_clip_weights_file(source: str, arch: str) -> str:
    """The local file holding the weights ``source`` names for architecture ``arch``.

    A file is itself; an open_clip tag is its cached file, else a download when the hub can
    be reached, else :class:`ClipWeightsError` at once (no retries) with the addresses.
    """
    if os.path.isfile(source):
        return source
    fix = "set dcac.clip_weights /path/to/that/file (or model.pretrained False for a random initialisation)"
    if arch == "tiny":
        raise ClipWeightsError(f"The tiny CLIP architecture has no published weights and {source!r} is not a file; "
                               "set dcac.clip_weights to a local state dict, or model.pretrained False.")
    if os.sep in source or source.endswith(_WEIGHT_SUFFIXES):
        raise ClipWeightsError(f"No such CLIP weights file: {source}. Download it, or {fix}.")
    pretrained_cfg = open_clip.get_pretrained_cfg(arch, source)
    if not pretrained_cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise ClipWeightsError(f"{source!r} is neither a file nor an open_clip pretrained tag of {arch} "
                               f"(tags: {tags}); {fix}.")
    cached = _cached_tag_file(pretrained_cfg)
    if cached:
        return cached
    reason = hub_unreachable_reason()
    if reason:
        raise ClipWeightsError(f"CLIP {arch} weights {source!r} are not in the local cache and {reason}. Download "
                               f"{' or '.join(_download_addresses(pretrained_cfg))}, then {fix}.")
    ensure_hub_cache_writable(f"CLIP {arch} weights {source!r}",
                              f"Or download {' or '.join(_download_addresses(pretrained_cfg))}, then {fix}.")
    print(f"Downloading CLIP {arch} weights {source!r} ...")
    try:
        return open_clip.download_pretrained(pretrained_cfg)
    except Exception as error:  # interrupted download, full disk, unknown file ...
        raise ClipWeightsError(f"Downloading CLIP {arch} weights {source!r} failed ({type(error).__name__}). "
                               f"Download {' or '.join(_download_addresses(pretrained_cfg))}, then {fix}.") from None


def read_clip_visual_weights(source: str, arch: str = "ViT-B-16") -> dict:
    """The CLIP image-tower state dict from a local file or an open_clip pretrained tag."""
    return visual_state_dict(_read_state_dict_file(resolve_clip_weights_file(source, arch)))


__all__ = ["ClipWeightsError", "read_clip_visual_weights", "resolve_clip_weights_file", "visual_state_dict"]
