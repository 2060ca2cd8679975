"""Re-ID view transforms: torchreid's names, plus the reference's pad-and-crop, bicubic resize.

torchreid's ``build_transforms`` resizes bilinearly and knows only its enlarge-and-crop
(``random_crop``); the DCAC reference resizes bicubically and pads 10 pixels before a
random crop. Both are offered under distinct names so a config says which it means.
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torchvision.transforms as T
from PIL import Image

from torchreid import data as reid_data

from ..registry import nearest_name

INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
TRAIN_TRANSFORMS = ("random_flip", "random_crop", "pad_crop", "random_patch", "color_jitter", "random_erase")


def _interpolation(name: str):
    try:
        return INTERPOLATIONS[name]
    except KeyError:
        raise ValueError(f"Unknown resize interpolation {name!r}; use one of {sorted(INTERPOLATIONS)}") from None


def build_reid_transforms(
    height: int,
    width: int,
    transforms: Sequence[str],
    norm_mean: Sequence[float],
    norm_std: Sequence[float],
    interpolation: str = "bicubic",
    pad: int = 10,
) -> Tuple[Callable, Callable]:
    """(train, test) transforms of the Re-ID view.

    ``transforms`` names, applied in this fixed order: random_flip (p 0.5), random_crop
    (torchreid: enlarge 1.125x and crop), pad_crop (pad ``pad`` zeros, random crop),
    random_patch, color_jitter (torchreid's settings), random_erase (torchreid's
    RandomErasing: p 0.5, area 0.02-0.4, aspect 0.3, filled with the normalisation mean).
    """
    names = [t.lower() for t in ([transforms] if isinstance(transforms, str) else transforms)]
    for name in names:
        if name not in TRAIN_TRANSFORMS:
            hint = nearest_name(name, TRAIN_TRANSFORMS)
            raise ValueError(
                f"Unknown transform {name!r} in data.transforms."
                + (f" Did you mean {hint!r}?" if hint else "")
                + f" Valid: {', '.join(TRAIN_TRANSFORMS)}"
            )
    resample = _interpolation(interpolation)
    size = (height, width)
    normalize = T.Normalize(mean=list(norm_mean), std=list(norm_std))
    train = [T.Resize(size, interpolation=resample)]
    if "random_flip" in names:
        train.append(T.RandomHorizontalFlip(p=0.5))
    if "random_crop" in names:
        train.append(reid_data.transforms.Random2DTranslation(height, width, interpolation=resample))
    if "pad_crop" in names:
        train += [T.Pad(pad), T.RandomCrop(size)]
    if "random_patch" in names:
        train.append(reid_data.transforms.RandomPatch())
    if "color_jitter" in names:
        train.append(T.ColorJitter(brightness=0.2, contrast=0.15, saturation=0, hue=0))
    train += [T.ToTensor(), normalize]
    if "random_erase" in names:
        train.append(reid_data.transforms.RandomErasing(mean=list(norm_mean)))
    test = [T.Resize(size, interpolation=resample), T.ToTensor(), normalize]
    return T.Compose(train), T.Compose(test)


def install_transforms(datamanager, train_transform: Callable, test_transform: Callable) -> None:
    """Replace the transforms torchreid's ImageDataManager built, in every loader it made."""
    datamanager.transform_tr, datamanager.transform_te = train_transform, test_transform
    datamanager.train_loader.dataset.transform = train_transform
    if getattr(datamanager, "train_loader_t", None) is not None:
        datamanager.train_loader_t.dataset.transform = train_transform
    for loaders in datamanager.test_loader.values():
        for loader in loaders.values():
            if loader is not None:
                loader.dataset.transform = test_transform
