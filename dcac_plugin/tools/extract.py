"""Re-ID features of arbitrary images from a trained run: ``dcac extract``.

Evaluation inside a run only covers registered datasets; retrieval on new footage, or
indexing a gallery once and querying it many times, needs the features themselves. They
are written as safetensors (tensors only, so reading a file from elsewhere runs no code)
with the image paths in the metadata, so rows can be traced back to their images.
"""
from __future__ import annotations

import argparse
import json
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from yacs.config import CfgNode as CN

from dcac_config.errors import UsageError

from ..data.loaders import image_list_loader
from ..data.transforms import evaluation_interpolation, plain_transform
from ..utils.checkpoint import atomic_write
from .export import InferenceEncoder
from .outputs import check_output_files


def eval_transform(cfg: CN) -> Callable:
    """The test-time transform the run was evaluated with (resize with the test interpolation,
    to tensor, normalise); independent of the training augmentations."""
    return plain_transform(cfg.data.height, cfg.data.width, cfg.data.norm_mean, cfg.data.norm_std,
                           evaluation_interpolation(cfg))


@torch.no_grad()
def extract_features(model: nn.Module, paths: Sequence[str], transform: Callable, batch_size: int = 64,
                     flip: bool = False, device: str = "cpu", workers: int = 0,
                     unreadable_fix: str = "remove or replace the file") -> torch.Tensor:
    """L2-normalised features [N, D] of the images at ``paths``, row i for ``paths[i]``, on the CPU.

    ``model`` is run through :class:`~dcac_plugin.tools.export.InferenceEncoder`, the same contract
    as the exported files, so extracted and deployed features agree.

    ``flip`` averages each image's feature with that of its horizontal mirror and
    re-normalises (the usual Re-ID test-time augmentation). The mirror is taken of the
    transformed tensor: normalisation is per channel, so this equals mirroring the image.
    An unreadable image stops it with ``unreadable_fix`` as the fix.
    """
    if not paths:
        raise ValueError("No images to extract features from.")
    encoder = InferenceEncoder(model).to(device)
    loader = image_list_loader([(path, 0, 0) for path in paths], transform, batch_size, workers,
                               pin_memory=str(device).startswith("cuda"), unreadable_fix=unreadable_fix)
    chunks: List[torch.Tensor] = []
    for batch in tqdm(loader, desc="Extracting features", unit="batch"):
        images = batch["img"].to(device, non_blocking=True)
        features = encoder(images)
        if flip:
            features = F.normalize(features + encoder(torch.flip(images, dims=[3])), dim=1)
        chunks.append(features.float().cpu())
    return torch.cat(chunks)


def save_features(path: str, features: torch.Tensor, paths: Sequence[str], meta: Dict[str, object]) -> str:
    """Write ``features`` with their image ``paths`` (metadata key "paths", JSON) and ``meta``, atomically.

    safetensors metadata holds strings only: values of ``meta`` that are not strings are
    stored as JSON.
    """
    from safetensors.torch import save

    if features.shape[0] != len(paths):
        raise ValueError(f"{features.shape[0]} feature rows for {len(paths)} image paths.")
    metadata = {key: value if isinstance(value, str) else json.dumps(value) for key, value in meta.items()}
    metadata["paths"] = json.dumps(list(paths))
    payload = save({"features": features.detach().cpu().contiguous()}, metadata=metadata)
    return atomic_write(path, lambda handle: handle.write(payload), size=len(payload))


def load_features(path: str) -> Tuple[torch.Tensor, List[str]]:
    """(features [N, D], image paths) from a :func:`save_features` file."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
        if "features" not in handle.keys() or "paths" not in metadata:
            raise ValueError(f"{path} is not a features file written by `dcac extract`.")
        return handle.get_tensor("features"), json.loads(metadata["paths"])


def default_device() -> str:
    """Where ``dcac extract`` runs without ``--device``: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_extract(args: argparse.Namespace) -> int:
    """``dcac extract``: the output is checked and the images are found before the model is
    loaded, so a wrong path (or an existing file without --overwrite) fails at once."""
    from .inference import image_paths, load_trained_model

    check_output_files([args.output], args.overwrite, "--output")
    try:
        paths = image_paths(args.images)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    if not paths:
        raise UsageError(f"No images (.jpg, .jpeg, .png, .bmp) in {args.images}.")
    model, cfg, weights = load_trained_model(args.run, args.config_file)
    features = extract_features(model, paths, eval_transform(cfg), batch_size=args.batch_size, flip=args.flip,
                                device=args.device or default_device(), workers=args.workers,
                                unreadable_fix=f"remove or replace the file, or leave it out of {args.images}")
    save_features(args.output, features, paths, {"weights": weights, "model": cfg.model.name, "flip": args.flip,
                                                 "height": cfg.data.height, "width": cfg.data.width})
    print(f"Extracted {features.shape[0]} images x {features.shape[1]} dims from {weights} -> {args.output}")
    return 0


__all__ = ["cmd_extract", "extract_features", "load_features", "save_features",
           "eval_transform"]
