"""Re-ID view transforms: torchreid's names, plus the reference's pad-and-crop, bicubic resize.

torchreid's ``build_transforms`` resizes bilinearly and knows only its enlarge-and-crop
(``random_crop``); the DCAC reference resizes bicubically and pads 10 pixels before a
random crop. Both are offered under distinct names so a config says which it means.

The reference resizes with two interpolations: bicubic in training and in the pass that
builds the PCL memory (its "cluster" loader), and at test time bilinearly for single-source
runs (its ``make_val_dataloader``, torchvision's default) but bicubically for multi-source
runs. Hence two config keys: ``dcac.resize_interpolation`` (training, memory) and
``dcac.test_resize_interpolation`` (evaluation, extraction, export, visualisation).

torchreid's data manager is handed these instead of building its own (:func:`torchreid_receives`),
and the run log lists them step by step (:func:`describe_transforms`).
"""
from __future__ import annotations

from typing import Any, Callable, ContextManager, NamedTuple, Optional, Sequence, Tuple

import torchvision.transforms as T
from PIL import Image
from torchreid import data as reid_data
from yacs.config import CfgNode as CN

from dcac_config.names import nearest_name

from ..utils.swap import swapped

INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
INTERPOLATION_NAMES = {int(code): name for name, code in INTERPOLATIONS.items()}
PLAIN_SETTINGS = (bool, int, float, str, list, tuple)
TRAIN_TRANSFORMS = ("random_flip", "random_crop", "pad_crop", "random_patch", "color_jitter", "random_erase")


class ReidTransforms(NamedTuple):
    """The Re-ID view's transforms of one run."""

    train: Callable  # augmented, training interpolation
    memory: Callable  # no augmentation, training interpolation: the PCL memory pass (reference's cluster loader)
    test: Callable  # no augmentation, test interpolation: evaluation, extraction, export, visualisation


def _interpolation(name: str):
    try:
        return INTERPOLATIONS[name]
    except KeyError:
        raise ValueError(f"Unknown resize interpolation {name!r}; use one of {sorted(INTERPOLATIONS)}") from None


def plain_transform(height: int, width: int, norm_mean: Sequence[float], norm_std: Sequence[float],
                    interpolation: str) -> Callable:
    """The Re-ID view without augmentation: resize with ``interpolation``, to tensor, normalise."""
    return T.Compose([T.Resize((height, width), interpolation=_interpolation(interpolation)), T.ToTensor(),
                      T.Normalize(mean=list(norm_mean), std=list(norm_std))])


def build_reid_transforms(
    height: int,
    width: int,
    transforms: Sequence[str],
    norm_mean: Sequence[float],
    norm_std: Sequence[float],
    interpolation: str = "bicubic",
    test_interpolation: Optional[str] = None,
    pad: int = 10,
) -> ReidTransforms:
    """The train, memory and test transforms of the Re-ID view.

    ``interpolation`` resizes in training and for the memory; ``test_interpolation`` (default:
    the same) at test time. ``transforms`` names, applied in this fixed order: random_flip
    (p 0.5), random_crop (torchreid: enlarge 1.125x and crop), pad_crop (pad ``pad`` zeros,
    random crop), random_patch, color_jitter (torchreid's settings), random_erase (torchreid's
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
    return ReidTransforms(train=T.Compose(train),
                          memory=plain_transform(height, width, norm_mean, norm_std, interpolation),
                          test=plain_transform(height, width, norm_mean, norm_std, test_interpolation or interpolation))


def evaluation_interpolation(cfg: CN) -> str:
    """``dcac.test_resize_interpolation``, or the training one when it is empty (the default,
    so that configs written before the key existed keep testing as they trained)."""
    return cfg.dcac.test_resize_interpolation or cfg.dcac.resize_interpolation


def reid_transforms(cfg: CN) -> ReidTransforms:
    """The Re-ID view's transforms a config describes."""
    return build_reid_transforms(cfg.data.height, cfg.data.width, cfg.data.transforms, cfg.data.norm_mean,
                                 cfg.data.norm_std, interpolation=cfg.dcac.resize_interpolation,
                                 test_interpolation=evaluation_interpolation(cfg))


def torchreid_receives(transforms: ReidTransforms) -> ContextManager[None]:
    """While active, torchreid's data managers take ``transforms`` (train, test) instead of
    building their own: every loader they make then holds ours from the start, and torchreid
    does not print its list ("+ resize to ...", bilinear, no pad_crop), which would not run."""
    return swapped(reid_data.datamanager, "build_transforms",
                   lambda *args, **kwargs: (transforms.train, transforms.test))


def _setting(name: str, value: Any) -> str:
    # torchreid keeps PIL's resampling code (3); its name is what a reader checks.
    if name == "interpolation" and value in INTERPOLATION_NAMES:
        return INTERPOLATION_NAMES[value]
    return repr(value)


def describe_step(step: Callable) -> str:
    """One step with its settings: torchvision's own repr names them; torchreid's steps have
    none (``<... object at 0x...>``), so theirs are their plain-valued attributes (state such
    as RandomPatch's pool of patches left out)."""
    if type(step).__repr__ is not object.__repr__:
        return repr(step)
    settings = ", ".join(f"{name}={_setting(name, value)}" for name, value in vars(step).items()
                         if isinstance(value, PLAIN_SETTINGS))
    return f"{type(step).__module__.split('.')[0]}.{type(step).__name__}({settings})"


def describe_transforms(passes: Sequence[Tuple[str, Callable]]) -> str:
    """``title:`` and one indented line per step, for each (title, transform) pass."""
    blocks = []
    for title, transform in passes:
        steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
        blocks.append(f"{title}:" + "".join(f"\n  {describe_step(step)}" for step in steps))
    return "\n".join(blocks)
