"""CLIP ViT Re-ID model (DCAC paper, section 4.1).

``backbone`` is open_clip's VisionTransformer, so its state-dict keys are OpenAI CLIP's
visual keys (conv1, class_embedding, positional_embedding, ln_pre, transformer.*,
ln_post, proj). On top: a BNNeck and a bias-free linear ID classifier (:mod:`.reid_head`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import _build_vision_tower
from torch import nn

from .clip_weights import ClipWeightsError, read_clip_visual_weights, resolve_clip_weights_file
from .reid_head import BNNeck, BNNeckReID, ReIDOutput, freeze_as_buffer  # noqa: F401  (BNNeck, ReIDOutput: re-exported)

ImageSize = Tuple[int, int]

# The CLIP architecture of each Re-ID model: an open_clip name, or ``tiny``.
CLIP_ARCHITECTURES = {"clip_vit_b16": "ViT-B-16", "clip_vit_tiny": "tiny"}

# The tiny architecture exists for tests and the CPU demo; it is built by the same code.
_TINY_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
}


def clip_architecture(arch: str) -> dict:
    """``{'embed_dim', 'vision_cfg'}`` of a CLIP architecture (an open_clip name or ``tiny``)."""
    if arch == "tiny":
        return {"embed_dim": _TINY_CFG["embed_dim"], "vision_cfg": dict(_TINY_CFG["vision_cfg"])}
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"Unknown open_clip architecture {arch!r}; see open_clip.list_models().")
    return {"embed_dim": cfg["embed_dim"], "vision_cfg": dict(cfg["vision_cfg"])}


def build_clip_visual(arch: str, image_size: Optional[ImageSize] = None) -> nn.Module:
    """A randomly initialised CLIP image tower, at ``image_size`` (H, W) if given.

    QuickGELU is forced: OpenAI's weights were trained with it, and a GELU tower filled
    with them drifts silently (about 1 % relative on the features).
    """
    spec = clip_architecture(arch)
    vision_cfg = spec["vision_cfg"]
    if image_size is not None:
        vision_cfg["image_size"] = tuple(image_size)
    return _build_vision_tower(spec["embed_dim"], vision_cfg, quick_gelu=True)


def interpolate_positional_embedding(pos_embed: torch.Tensor, new_grid: Sequence[int]) -> torch.Tensor:
    """Resize a ViT positional embedding [1 + Gh*Gw, C] to a new patch grid.

    The CLS position (row 0) is kept as is; the patch positions are treated as a square
    image of channels and resized bilinearly (as the reference does for 14x14 -> 16x8).
    """
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    old_side = int(round(patch_pos.shape[0] ** 0.5))
    if old_side * old_side != patch_pos.shape[0]:
        raise ValueError(f"Positional embedding with {patch_pos.shape[0]} patch positions is not a square grid.")
    new_grid = tuple(int(g) for g in new_grid)
    if (old_side, old_side) == new_grid:
        return pos_embed.clone()
    grid = patch_pos.reshape(1, old_side, old_side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bilinear", align_corners=False)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


def load_clip_visual_weights(visual: nn.Module, state: dict) -> None:
    """Load an image-tower state dict into ``visual``, resizing the positional embedding."""
    state = dict(state)
    if "positional_embedding" in state:
        state["positional_embedding"] = interpolate_positional_embedding(
            state["positional_embedding"], visual.grid_size
        )
    missing, unexpected = visual.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ClipWeightsError(
            f"CLIP weights do not match the {type(visual).__name__} architecture: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}."
        )


class ClipReID(BNNeckReID):
    """CLIP image encoder + BNNeck + ID classifier (outputs: :class:`BNNeckReID`)."""

    def __init__(self, backbone: nn.Module, num_classes: int, loss: str = "softmax") -> None:
        feature_dim = int(backbone.proj.shape[1]) if backbone.proj is not None else backbone.transformer.width
        super().__init__(backbone, feature_dim, num_classes, loss)
        # Only the patch projection is frozen (paper 5.2: "for stability").
        freeze_as_buffer(self.backbone.conv1, "weight")

    def source_line(self) -> str:
        return f"CLIP weights: {self.weights_source}"


def build_clip_reid(
    arch: str,
    num_classes: int,
    loss: str = "softmax",
    pretrained: Union[bool, str] = True,
    weights: str = "openai",
    img_size: ImageSize = (256, 128),
) -> ClipReID:
    """Build the Re-ID model; ``pretrained`` True loads ``weights`` (tag or file), a str is a file.

    ``weights_source`` of the model says what the image tower was initialised from (for the run log).
    """
    visual = build_clip_visual(arch, img_size)
    if isinstance(pretrained, str) and pretrained:
        weights, pretrained = pretrained, True
    source = "random initialisation (model.pretrained False)"
    if pretrained:
        path = resolve_clip_weights_file(weights, arch)
        load_clip_visual_weights(visual, read_clip_visual_weights(path, arch))
        source = path if path == weights else f"{weights} ({path})"
    model = ClipReID(visual, num_classes, loss)
    model.weights_source = source
    return model


def clip_vit_b16(num_classes: int, loss: str = "softmax", pretrained: Union[bool, str] = True,
                 weights: str = "openai", img_size: ImageSize = (256, 128), **kwargs) -> ClipReID:
    """CLIP ViT-B/16 Re-ID model (torchreid factory entry; ``use_gpu``/``device`` are ignored)."""
    return build_clip_reid(CLIP_ARCHITECTURES["clip_vit_b16"], num_classes, loss, pretrained, weights, img_size)


def clip_vit_tiny(num_classes: int, loss: str = "softmax", pretrained: Union[bool, str] = False,
                  weights: str = "", img_size: ImageSize = (128, 64), **kwargs) -> ClipReID:
    """A 2-layer, 64-wide CLIP ViT/16 for tests and the CPU demo; weights only from a local file."""
    return build_clip_reid(CLIP_ARCHITECTURES["clip_vit_tiny"], num_classes, loss, pretrained, weights, img_size)


CLIP_MODELS = {"clip_vit_b16": clip_vit_b16, "clip_vit_tiny": clip_vit_tiny}


def clip_patch_size(model_name: str) -> int:
    """The ViT patch size of CLIP Re-ID model ``model_name``: the sides of its input must be
    multiples of it (the patch grid is floored, so the remainder would be silently ignored)."""
    return int(clip_architecture(CLIP_ARCHITECTURES[model_name])["vision_cfg"]["patch_size"])
