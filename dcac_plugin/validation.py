"""Config values in their valid range, checked before any work.

yacs checks a value's type, not its range, and torchreid takes what it is given: a batch size of
0 fails deep inside the first epoch, a negative learning rate or temperature trains on without
complaint, an input size the ViT's patch size does not divide loses its last rows without a word.
Each rule below is one function that names the key, the valid range and a value to use instead;
:func:`check_values` runs them all (the launcher's ``check_config`` calls it).
"""
from __future__ import annotations

import math
from typing import Any, Callable, List, Tuple

from torchreid import optim as reid_optim
from yacs.config import CfgNode as CN

from .data.random_splits import check_split_ids
from .errors import ConfigError
from .models.clip_reid import CLIP_MODELS, clip_patch_size
from .registry import nearest_name

# The VAE of Stable Diffusion halves the image three times: an 8x smaller latent.
VAE_DOWNSAMPLING = 8


def _value(cfg: CN, key: str) -> Any:
    """The value of dotted ``key`` in ``cfg``."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _at_least(cfg: CN, key: str, minimum: int) -> None:
    """``key`` must be a count of at least ``minimum``."""
    value = _value(cfg, key)
    if value < minimum:
        raise ConfigError(f"{key} is {value}; it must be at least {minimum}.")


def _positive(cfg: CN, key: str) -> None:
    """``key`` must be a finite number above 0."""
    value = _value(cfg, key)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key} is {value}; it must be a finite number above 0.")


def _multiples_near(value: int, step: int) -> List[int]:
    """The multiples of ``step`` just below and above ``value`` (those that are positive)."""
    below = value // step * step
    return [size for size in (below, below + step) if size > 0]


def _alternatives(sizes: List[int]) -> str:
    return " or ".join(str(size) for size in sizes)


def check_batch_sizes(cfg: CN) -> None:
    """A batch holds at least one image, in training and in testing."""
    _at_least(cfg, "train.batch_size", 1)
    _at_least(cfg, "test.batch_size", 1)


def check_identity_sampler(cfg: CN) -> None:
    """``RandomIdentitySampler`` fills a batch with P identities x K = ``sampler.num_instances``
    images. torchreid only checks batch_size >= K; with a remainder, its loader's batches cut
    across the identity groups, so batch_size must be a multiple of K (as under torchrun)."""
    _at_least(cfg, "sampler.num_instances", 1)
    if cfg.sampler.train_sampler != "RandomIdentitySampler":
        return
    batch, instances = cfg.train.batch_size, cfg.sampler.num_instances
    if batch % instances:
        raise ConfigError(f"train.batch_size {batch} is not a multiple of sampler.num_instances {instances}: "
                          f"RandomIdentitySampler fills each batch with whole groups of {instances} images of one "
                          "identity, and a remainder would cut across them. Set train.batch_size to "
                          f"{_alternatives(_multiples_near(batch, instances))}, or change sampler.num_instances.")


def check_workers(cfg: CN) -> None:
    """0 loader workers reads in the main process; fewer is meaningless."""
    _at_least(cfg, "data.workers", 0)


def check_learning_rate(cfg: CN) -> None:
    """A learning rate of 0 trains nothing; a negative one ascends the loss."""
    _positive(cfg, "train.lr")


def check_optimizer(cfg: CN) -> None:
    """``train.optim`` names one of torchreid's optimizers (it would refuse any other only once
    the data and model are built)."""
    valid = reid_optim.optimizer.AVAI_OPTIMS
    if cfg.train.optim not in valid:
        hint = nearest_name(cfg.train.optim, valid)
        raise ConfigError(f"train.optim {cfg.train.optim!r} is not one of torchreid's optimizers: "
                          f"{', '.join(valid)}." + (f" Did you mean {hint!r}?" if hint else ""))


def check_input_size(cfg: CN) -> None:
    """The input has positive sides, and for a CLIP ViT sides its patch size divides: the patch
    grid is floored, so the remainder rows or columns would be silently ignored."""
    for key in ("data.height", "data.width"):
        _at_least(cfg, key, 1)
    if cfg.model.name not in CLIP_MODELS:
        return
    patch = clip_patch_size(cfg.model.name)
    for key in ("data.height", "data.width"):
        size = _value(cfg, key)
        if size % patch:
            raise ConfigError(f"{key} {size} is not a multiple of {patch}: model {cfg.model.name} cuts its input "
                              f"into {patch}x{patch} patches and would ignore the last {size % patch} pixels. "
                              f"Set {key} to {_alternatives(_multiples_near(size, patch))}.")


def check_lora_rank(cfg: CN) -> None:
    """A LoRA adapter of rank 0 has no parameters."""
    _at_least(cfg, "dcac.lora.rank", 1)


def check_temperatures(cfg: CN) -> None:
    """Softmax temperatures divide the logits (eq. 6 and 12)."""
    _positive(cfg, "dcac.pcl.temperature")
    _positive(cfg, "dcac.condition.temperature")


def check_diffusion_image_size(cfg: CN) -> None:
    """The VAE encodes the diffusion view to a latent 8x smaller per side."""
    size = cfg.dcac.diffusion.image_size
    if size < VAE_DOWNSAMPLING or size % VAE_DOWNSAMPLING:
        raise ConfigError(f"dcac.diffusion.image_size {size} is not a positive multiple of {VAE_DOWNSAMPLING} (the "
                          f"VAE's downsampling). Set it to "
                          f"{_alternatives(_multiples_near(max(size, 1), VAE_DOWNSAMPLING))}; the paper uses 128.")


def check_test_split_ids(cfg: CN) -> None:
    """``test.split_ids`` names splits that the random-split targets (iLIDS, PRID, GRID, VIPeR) have."""
    check_split_ids(list(cfg.data.targets), list(cfg.test.split_ids))


def check_distributed_timeouts(cfg: CN) -> None:
    """Under torchrun, the processes wait for each other at most these many minutes."""
    _positive(cfg, "train.dist_timeout_minutes")
    _positive(cfg, "train.dist_rendezvous_minutes")


RULES: Tuple[Callable[[CN], None], ...] = (
    check_batch_sizes, check_identity_sampler, check_workers, check_learning_rate, check_optimizer,
    check_input_size, check_lora_rank, check_temperatures, check_diffusion_image_size, check_test_split_ids,
    check_distributed_timeouts)


def check_values(cfg: CN) -> None:
    """Raise :class:`ConfigError` for the first value out of its range (see :data:`RULES`)."""
    for rule in RULES:
        rule(cfg)


__all__ = ["RULES", "VAE_DOWNSAMPLING", "check_batch_sizes", "check_diffusion_image_size", "check_distributed_timeouts",
           "check_identity_sampler", "check_input_size", "check_learning_rate", "check_lora_rank", "check_optimizer",
           "check_temperatures", "check_test_split_ids", "check_values", "check_workers"]
