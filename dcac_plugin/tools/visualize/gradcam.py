"""GradCAM for the CLIP ViT Re-ID model, as in the paper's Fig. 3.

Fig. 3 asks where the model looks when an image is scored under *another* identity's
class ("images of ID #27 under ID #28"), so the target is any classifier logit, not the
predicted one. The logits come from the train-mode path (backbone -> BNNeck ->
classifier) computed by hand in eval mode, so BatchNorm uses its running statistics and
the model is left exactly as it was.

The activations are the tokens entering the last transformer block (its ``ln_1``
output). The block's *output* cannot be used: the image feature is the CLS token of that
output alone, so the gradient on its patch tokens is zero.
"""
from __future__ import annotations

import os.path as osp
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from yacs.config import CfgNode as CN

from dcac_config.errors import UsageError

from ...data.images import ImageReadError, read_image_checked
from ...models import CLIP_MODELS, ClipReID
from ...utils.checkpoint import CheckpointError, atomic_write


def _target_layer(model: nn.Module) -> nn.Module:
    return model.backbone.transformer.resblocks[-1].ln_1


def _batch_first(model: nn.Module) -> bool:
    # open_clip before 2.2x ran its transformer sequence-first and had no such attribute.
    return bool(getattr(model.backbone.transformer, "batch_first", False))


def gradcam(model: nn.Module, image_tensor: torch.Tensor, class_index: int) -> np.ndarray:
    """GradCAM map [H, W] in [0, 1] of one normalised image [1, 3, H, W] for logit ``class_index``."""
    if image_tensor.dim() != 4 or image_tensor.shape[0] != 1:
        raise ValueError(f"gradcam takes one image [1, 3, H, W], got shape {tuple(image_tensor.shape)}.")
    num_classes = model.classifier.out_features
    if not 0 <= class_index < num_classes:
        raise ValueError(f"class_index {class_index} is outside the classifier's {num_classes} classes.")
    grid_h, grid_w = model.backbone.grid_size
    captured = {}
    handle = _target_layer(model).register_forward_hook(lambda _m, _i, out: captured.update(tokens=out))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        # An input that needs a gradient keeps the graph alive even if every weight is frozen.
        image = image_tensor.detach().to(device).requires_grad_(True)
        with torch.enable_grad():
            logits = model.classifier(model.bnneck(model.backbone(image)))
            tokens = captured["tokens"]
            grads = torch.autograd.grad(logits[0, class_index], tokens)[0]
    finally:
        handle.remove()
        model.train(was_training)
    if not _batch_first(model):
        tokens, grads = tokens.transpose(0, 1), grads.transpose(0, 1)
    # Keep the patch tokens: the CLS (and any register) tokens come first.
    tokens, grads = tokens[0, -grid_h * grid_w:].detach(), grads[0, -grid_h * grid_w:]
    weights = grads.mean(dim=0)
    cam = F.relu(tokens @ weights).reshape(1, 1, grid_h, grid_w)
    cam = F.interpolate(cam, size=tuple(image_tensor.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    peak = cam.max()
    return (cam / peak if peak > 0 else cam).float().cpu().numpy()


def overlay(image_rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image_rgb`` (uint8 [H, W, 3]) blended with ``cam`` ([H, W] in [0, 1]) in the jet colormap."""
    import cv2

    if image_rgb.shape[:2] != cam.shape:
        raise ValueError(f"Image {image_rgb.shape[:2]} and map {cam.shape} differ in size.")
    heat = cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    blended = (1 - alpha) * image_rgb.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(blended, 0, 255).astype(np.uint8)


def classifier_checkpoint(run: str) -> str:
    """The checkpoint of ``run`` that holds the ID classifier (the encoder export has none)."""
    if not osp.isdir(run):
        if run.endswith(".safetensors"):
            raise CheckpointError(f"{run} is a test-time encoder: GradCAM needs the ID classifier, which it does not "
                                  "hold. Name model/best.pth.tar or model/latest.pth.tar of its run.")
        return run
    for name in ("best.pth.tar", "latest.pth.tar"):
        path = osp.join(run, "model", name)
        if osp.isfile(path):
            return path
    raise CheckpointError(f"Run directory {run} has no model/best.pth.tar or model/latest.pth.tar: GradCAM needs "
                          "the ID classifier, which encoder.safetensors does not hold. Name a checkpoint file.")


def require_clip_model(model: nn.Module, cfg: CN) -> None:
    """GradCAM reads a ViT's tokens through the BNNeck -> classifier path: CLIP Re-ID models only."""
    if not isinstance(model, ClipReID):
        raise UsageError(f"dcac visualize gradcam needs a CLIP ViT Re-ID model (model.name "
                         f"{' or '.join(sorted(CLIP_MODELS))}: ViT tokens, BNNeck and ID classifier); this run "
                         f"trained {cfg.model.name} with engine {cfg.engine}.")


def image_format(path: str) -> str:
    """The PIL format a picture file's extension names (the file is written through a handle,
    which has no name to guess it from)."""
    extension = osp.splitext(path)[1].lower()
    known = Image.registered_extensions()
    if extension not in known:
        raise ValueError(f"{path}: unknown picture extension {extension or '(none)'!r}; name a .png or .jpg file.")
    return known[extension]


def save_gradcam_grid(run: str, images: Sequence[str], class_index: int, out_path: str) -> str:
    """One row per image: the image at the model's input size, then its GradCAM overlay for
    ``class_index``; written atomically in the format ``out_path``'s extension names."""
    from ..extract import eval_transform
    from ..inference import load_trained_model

    if not images:
        raise ValueError("No images given for GradCAM.")
    picture_format = image_format(out_path)
    model, cfg, _ = load_trained_model(classifier_checkpoint(run))
    require_clip_model(model, cfg)
    test_transform = eval_transform(cfg)
    rows = []
    for path in images:
        try:
            picture = read_image_checked(path)
        except ImageReadError as error:
            raise ImageReadError.for_file(path, error.reason, "replace the file, or leave it out of the images "
                                                              "given to dcac visualize gradcam") from None
        # The same resize the model sees, so the map lines up with the picture.
        shown = np.asarray(test_transform.transforms[0](picture))
        cam = gradcam(model, test_transform(picture).unsqueeze(0), class_index)
        rows.append(np.concatenate([shown, overlay(shown, cam)], axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    return atomic_write(out_path, lambda handle: grid.save(handle, format=picture_format))


__all__ = ["classifier_checkpoint", "gradcam", "overlay", "save_gradcam_grid"]
