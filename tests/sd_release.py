"""Writers of the published Stable Diffusion v1.5 artefacts, in their published form, at tiny size.

What a user downloads, reproduced file for file where our code reads it:

* the diffusers release ``stable-diffusion-v1-5/stable-diffusion-v1-5``: ``model_index.json``,
  ``scheduler/scheduler_config.json`` (a diffusers-0.6.0 PNDMScheduler config, verbatim: no
  ``prediction_type``), ``unet/config.json`` and ``vae/config.json`` with exactly the keys of the
  0.6.0 files (no ``scaling_factor`` in the VAE's), the main U-Net weights (the EMA copy) and the
  ``non_ema`` variant, as ``.safetensors`` and/or ``.bin``;
* the same release inside a Hugging Face hub cache (``models--owner--name/{blobs,refs,snapshots}``,
  snapshot files being symlinks to blobs);
* the original single file ``v1-5-pruned.ckpt`` / ``.safetensors``: LDM key names, the non-EMA
  U-Net under ``model.diffusion_model.*``, LitEma's copy under ``model_ema.<name without dots>``
  plus ``model_ema.decay`` / ``num_updates``, the VAE under ``first_stage_model.*`` (attention
  projections as 1x1 convolutions), text-encoder and schedule entries, and, in the ``.ckpt``,
  everything nested under ``state_dict`` beside ``global_step``.

Only the sizes are tiny (block widths, layers, cross-attention width): every config key and
version string is the published one. The LDM names are written by the inverse of diffusers'
own conversion (checked by the tests: converting back gives the weights written).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple, Union

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

PathLike = Union[str, Path]
StateDict = Dict[str, torch.Tensor]
REPO_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"

# ----------------------------------------------------------------- the published files, verbatim

PUBLISHED_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False,
}
PUBLISHED_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
    "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
PUBLISHED_VAE_CONFIG = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
PUBLISHED_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# Tiny sizes with SD's structure: cross-attention blocks, a plain lowest level, 8x VAE downsampling.
TINY_UNET_CONFIG = {**PUBLISHED_UNET_CONFIG, "block_out_channels": [32, 64], "cross_attention_dim": 32,
                    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "layers_per_block": 1,
                    "norm_num_groups": 16, "sample_size": 16, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}
TINY_VAE_CONFIG = {**PUBLISHED_VAE_CONFIG, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1,
                   "norm_num_groups": 8}
TINY_PROMPT_DIM = TINY_UNET_CONFIG["cross_attention_dim"]


def _model_config(config: dict) -> dict:
    return {key: value for key, value in config.items() if not key.startswith("_")}


def tiny_unet_state(seed: int) -> StateDict:
    """Weights of the tiny U-Net (diffusers names), a function of ``seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**_model_config(TINY_UNET_CONFIG))
        # diffusers zero-initialises some layers (conv_out); random everywhere makes copies distinguishable.
        for param in unet.parameters():
            param.data.normal_(0.0, 0.05)
    return {key: value.contiguous() for key, value in unet.state_dict().items()}


def tiny_vae_state(seed: int) -> StateDict:
    """Weights of the tiny VAE (diffusers names)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**_model_config(TINY_VAE_CONFIG))
    return {key: value.contiguous() for key, value in vae.state_dict().items()}


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")


def _write_weights(folder: Path, state: StateDict, variant: Optional[str], formats: Iterable[str]) -> None:
    infix = f".{variant}" if variant else ""
    for fmt in formats:
        path = folder / f"diffusion_pytorch_model{infix}.{fmt}"
        if fmt == "safetensors":
            save_file(state, str(path), metadata={"format": "pt"})
        else:
            torch.save(state, str(path))


def write_release_folder(root: PathLike, ema_unet: StateDict, non_ema_unet: Optional[StateDict],
                         vae: StateDict, formats: Tuple[str, ...] = ("safetensors", "bin"),
                         non_ema_formats: Optional[Tuple[str, ...]] = None) -> Path:
    """The diffusers release folder: configs as published, main (EMA) U-Net, ``non_ema`` variant
    (left out when ``non_ema_unet`` is None), VAE."""
    root = Path(root)
    _write_json(root / "model_index.json", PUBLISHED_MODEL_INDEX)
    _write_json(root / "scheduler" / "scheduler_config.json", PUBLISHED_SCHEDULER_CONFIG)
    _write_json(root / "unet" / "config.json", TINY_UNET_CONFIG)
    _write_json(root / "vae" / "config.json", TINY_VAE_CONFIG)
    _write_weights(root / "unet", ema_unet, None, formats)
    if non_ema_unet is not None:
        _write_weights(root / "unet", non_ema_unet, "non_ema", non_ema_formats or formats)
    _write_weights(root / "vae", vae, None, formats)
    return root


def write_hub_cache(cache_dir: PathLike, folder: PathLike, repo_id: str = REPO_ID,
                    commit: str = "451f4fe16113bff5a5d2269ed5ad43b0592e9a14") -> Path:
    """``folder`` as huggingface_hub caches a download of ``repo_id``: blobs named by content hash,
    ``refs/main`` holding the commit, ``snapshots/<commit>/...`` symlinks to the blobs."""
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for source in sorted(Path(folder).rglob("*")):
        if not source.is_file():
            continue
        blob = repo / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
        shutil.copyfile(source, blob)
        link = snapshot / source.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return snapshot


# ------------------------------------------------------- original (LDM) single-file checkpoints

_RESNET_TO_LDM = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                  ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _renamed(name: str, pairs) -> str:
    for new, old in pairs:
        name = re.sub(rf"(^|\.){re.escape(new)}(\.|$)", rf"\g<1>{old}\g<2>", name)
    return name


def unet_key_to_ldm(key: str, config: dict = TINY_UNET_CONFIG) -> str:
    """The LDM (CompVis ``openaimodel``) name of a diffusers U-Net parameter."""
    per_level = config["layers_per_block"] + 1
    head, _, param = key.rpartition(".")
    if head in _UNET_FIXED:
        return f"{_UNET_FIXED[head]}.{param}"
    parts = key.split(".")
    if parts[0] == "down_blocks":
        level, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":
            return f"input_blocks.{(level + 1) * per_level}.0.op.{parts[-1]}"
        index = level * per_level + int(parts[3]) + 1
        rest = ".".join(parts[4:])
        return (f"input_blocks.{index}.0.{_renamed(rest, _RESNET_TO_LDM)}" if kind == "resnets"
                else f"input_blocks.{index}.1.{rest}")
    if parts[0] == "up_blocks":
        level, kind = int(parts[1]), parts[2]
        has_attention = config["up_block_types"][level].startswith("CrossAttn")
        if kind == "upsamplers":
            return f"output_blocks.{level * per_level + per_level - 1}.{2 if has_attention else 1}.conv.{parts[-1]}"
        index = level * per_level + int(parts[3])
        rest = ".".join(parts[4:])
        return (f"output_blocks.{index}.0.{_renamed(rest, _RESNET_TO_LDM)}" if kind == "resnets"
                else f"output_blocks.{index}.1.{rest}")
    if parts[0] == "mid_block":
        rest = ".".join(parts[3:])
        if parts[1] == "resnets":
            return f"middle_block.{2 * int(parts[2])}.{_renamed(rest, _RESNET_TO_LDM)}"
        return f"middle_block.1.{rest}"
    raise KeyError(key)


_VAE_ATTENTION_TO_LDM = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def vae_key_to_ldm(key: str, config: dict = TINY_VAE_CONFIG) -> str:
    """The LDM (``first_stage_model``) name of a diffusers VAE parameter."""
    levels = len(config["block_out_channels"])
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                 lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                 lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.", key)
    key = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", key)
    if "mid_block.attentions.0." in key:
        key = _renamed(key.replace("mid_block.attentions.0.", "mid.attn_1."), _VAE_ATTENTION_TO_LDM)
    return key


def _ldm_vae_value(ldm_key: str, value: torch.Tensor) -> torch.Tensor:
    """LDM's VAE attention projections are 1x1 convolutions where diffusers has linear layers."""
    if ".attn_1." in ldm_key and ldm_key.endswith("weight") and value.dim() == 2:
        return value[:, :, None, None]
    return value


def ema_key(ldm_unet_key: str) -> str:
    """LitEma's buffer name for ``model.diffusion_model.<name>``: the dots of the name removed."""
    return "model_ema." + ldm_unet_key[len("model."):].replace(".", "")


def ldm_state_dict(non_ema_unet: StateDict, ema_unet: Optional[StateDict], vae: StateDict) -> StateDict:
    """The flat key set of ``v1-5-pruned`` (``ema_unet`` None: of ``v1-5-pruned-emaonly``, whose
    one U-Net copy is then ``non_ema_unet``'s argument)."""
    state: StateDict = {}
    for key, value in non_ema_unet.items():
        state["model.diffusion_model." + unet_key_to_ldm(key)] = value
    if ema_unet is not None:
        for key, value in ema_unet.items():
            state[ema_key("model.diffusion_model." + unet_key_to_ldm(key))] = value
        state["model_ema.decay"] = torch.tensor(0.9999)
        state["model_ema.num_updates"] = torch.tensor(840000, dtype=torch.int32)
    for key, value in vae.items():
        ldm_key = vae_key_to_ldm(key)
        state["first_stage_model." + ldm_key] = _ldm_vae_value(ldm_key, value)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    state["betas"] = betas.float()
    state["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    state["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(TINY_PROMPT_DIM)
    return {key: value.contiguous() for key, value in state.items()}


def write_single_file(path: PathLike, state: StateDict) -> Path:
    """``.ckpt``: ``{'global_step', 'state_dict'}`` as torch.save; ``.safetensors``: flat."""
    path = Path(path)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"global_step": 840000, "state_dict": state}, str(path))
    return path


def write_single_file_configs(root: PathLike) -> Path:
    """The configs folder a single file is converted against (tiny sizes, published keys)."""
    root = Path(root)
    _write_json(root / "scheduler" / "scheduler_config.json", PUBLISHED_SCHEDULER_CONFIG)
    _write_json(root / "unet" / "config.json", TINY_UNET_CONFIG)
    _write_json(root / "vae" / "config.json", TINY_VAE_CONFIG)
    return root
