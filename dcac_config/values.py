"""Config values in their valid range, the rules that need no model (see
:mod:`dcac_plugin.run.validation` for those that do).

yacs checks a value's type, not its range, and torchreid takes what it is given: a batch size of
0 fails deep inside the first epoch, a negative learning rate or temperature trains on without
complaint. Each rule below is one function that names the key, the valid range and a value to
use instead; ``dcac`` runs them before it imports any model.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Sequence, Tuple

from yacs.config import CfgNode as CN

from .errors import ConfigError

# The VAE of Stable Diffusion halves the image three times: an 8x smaller latent.
VAE_DOWNSAMPLING = 8

# How many splits torchreid's reader holds, and the ones the standard protocol averages over.
SPLIT_COUNTS: Dict[str, int] = {"ilids": 10, "prid": 10, "grid": 10, "viper": 20}
STANDARD_SPLIT_IDS: Dict[str, Tuple[int, ...]] = {
    "ilids": tuple(range(10)), "prid": tuple(range(10)), "grid": tuple(range(10)),
    "viper": tuple(range(0, 20, 2)),  # one direction (camera A queries) of each of its 10 partitions
}


def value_at(cfg: CN, key: str) -> Any:
    """The value of dotted ``key`` in ``cfg``."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def at_least(cfg: CN, key: str, minimum: int) -> None:
    """``key`` must be a count of at least ``minimum``."""
    value = value_at(cfg, key)
    if value < minimum:
        raise ConfigError(f"{key} is {value}; it must be at least {minimum}.")


def positive(cfg: CN, key: str) -> None:
    """``key`` must be a finite number above 0."""
    value = value_at(cfg, key)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key} is {value}; it must be a finite number above 0.")


def multiples_near(value: int, step: int) -> List[int]:
    """The multiples of ``step`` just below and above ``value`` (those that are positive)."""
    below = value // step * step
    return [size for size in (below, below + step) if size > 0]


def alternatives(sizes: List[int]) -> str:
    return " or ".join(str(size) for size in sizes)


def check_batch_sizes(cfg: CN) -> None:
    """A batch holds at least one image, in training and in testing."""
    at_least(cfg, "train.batch_size", 1)
    at_least(cfg, "test.batch_size", 1)


def check_identity_sampler(cfg: CN) -> None:
    """``RandomIdentitySampler`` fills a batch with P identities x K = ``sampler.num_instances``
    images. torchreid only checks batch_size >= K; with a remainder, its loader's batches cut
    across the identity groups, so batch_size must be a multiple of K (as under torchrun)."""
    at_least(cfg, "sampler.num_instances", 1)
    if cfg.sampler.train_sampler != "RandomIdentitySampler":
        return
    batch, instances = cfg.train.batch_size, cfg.sampler.num_instances
    if batch % instances:
        raise ConfigError(f"train.batch_size {batch} is not a multiple of sampler.num_instances {instances}: "
                          f"RandomIdentitySampler fills each batch with whole groups of {instances} images of one "
                          "identity, and a remainder would cut across them. Set train.batch_size to "
                          f"{alternatives(multiples_near(batch, instances))}, or change sampler.num_instances.")


def check_workers(cfg: CN) -> None:
    """0 loader workers reads in the main process; fewer is meaningless."""
    at_least(cfg, "data.workers", 0)


def check_learning_rate(cfg: CN) -> None:
    """A learning rate of 0 trains nothing; a negative one ascends the loss."""
    positive(cfg, "train.lr")


def check_lora_rank(cfg: CN) -> None:
    """A LoRA adapter of rank 0 has no parameters."""
    at_least(cfg, "dcac.lora.rank", 1)


def check_temperatures(cfg: CN) -> None:
    """Softmax temperatures divide the logits (eq. 6 and 12)."""
    positive(cfg, "dcac.pcl.temperature")
    positive(cfg, "dcac.condition.temperature")


def check_diffusion_image_size(cfg: CN) -> None:
    """The VAE encodes the diffusion view to a latent 8x smaller per side."""
    size = cfg.dcac.diffusion.image_size
    if size < VAE_DOWNSAMPLING or size % VAE_DOWNSAMPLING:
        raise ConfigError(f"dcac.diffusion.image_size {size} is not a positive multiple of {VAE_DOWNSAMPLING} (the "
                          f"VAE's downsampling). Set it to "
                          f"{alternatives(multiples_near(max(size, 1), VAE_DOWNSAMPLING))}; the paper uses 128.")


def check_distributed_timeouts(cfg: CN) -> None:
    """Under torchrun, the processes wait for each other at most these many minutes."""
    positive(cfg, "train.dist_timeout_minutes")
    positive(cfg, "train.dist_rendezvous_minutes")


def check_split_ids(targets: Sequence[str], requested: Sequence[int]) -> None:
    """``test.split_ids`` must name splits every random-split target has (torchreid would take a
    negative id from the end of its list, silently)."""
    for dataset in targets:
        if dataset not in SPLIT_COUNTS:
            continue
        count = SPLIT_COUNTS[dataset]
        bad = [i for i in requested if not 0 <= int(i) < count]
        if bad:
            raise ConfigError(f"test.split_ids {list(requested)} names split {bad[0]}, but target {dataset!r} has "
                              f"splits 0..{count - 1}. Give ids in that range, or [] for its standard "
                              f"{len(STANDARD_SPLIT_IDS[dataset])} ({listed_ids(STANDARD_SPLIT_IDS[dataset])}).")


def listed_ids(ids: Sequence[int]) -> str:
    """Split ids as a message lists them."""
    return ", ".join(str(i) for i in ids)


def check_test_split_ids(cfg: CN) -> None:
    """``test.split_ids`` names splits that the random-split targets (iLIDS, PRID, GRID, VIPeR) have."""
    check_split_ids(list(cfg.data.targets), list(cfg.test.split_ids))


# In their order; dcac_plugin.run.validation.RULES runs these with its two model rules after the learning rate.
RULES_WITHOUT_MODELS: Tuple[Callable[[CN], None], ...] = (
    check_batch_sizes, check_identity_sampler, check_workers, check_learning_rate, check_lora_rank,
    check_temperatures, check_diffusion_image_size, check_test_split_ids, check_distributed_timeouts)


def check_values_without_models(cfg: CN) -> None:
    """Raise :class:`ConfigError` for the first value out of its range among the rules that need
    no model or dataset reader (:data:`RULES_WITHOUT_MODELS`)."""
    for rule in RULES_WITHOUT_MODELS:
        rule(cfg)


__all__ = ["RULES_WITHOUT_MODELS", "SPLIT_COUNTS", "STANDARD_SPLIT_IDS", "VAE_DOWNSAMPLING", "alternatives",
           "at_least", "check_batch_sizes", "check_diffusion_image_size", "check_distributed_timeouts",
           "check_identity_sampler", "check_learning_rate", "check_lora_rank", "check_split_ids", "check_temperatures",
           "check_test_split_ids", "check_values_without_models", "check_workers", "listed_ids", "multiples_near",
           "positive", "value_at"]
