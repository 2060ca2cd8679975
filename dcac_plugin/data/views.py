"""The two views of a training image for the DCAC engine (paper 4.2, 5.2).

The Re-ID view is augmented; the diffusion view is the same image, never augmented,
resized bicubically to a square (the 2:1 person is squashed) and scaled to [-1, 1].
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
import torchvision.transforms as T
from PIL import Image


def diffusion_view_transform(size: int = 128) -> Callable:
    """Bicubic resize to size x size, then [0, 1] -> [-1, 1]; no augmentation."""
    return T.Compose([T.Resize((size, size), interpolation=Image.BICUBIC), T.ToTensor(),
                      T.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])])


class TwoViewTransform:
    """Returns (Re-ID view, diffusion view) of one PIL image; torchreid's collate keeps the pair."""

    def __init__(self, reid_transform: Callable, diffusion_transform: Callable) -> None:
        self.reid_transform = reid_transform
        self.diffusion_transform = diffusion_transform

    def __call__(self, image: Image.Image) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.reid_transform(image), self.diffusion_transform(image)
