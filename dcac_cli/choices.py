"""The fixed names the ``dcac`` parsers offer, kept here so that building them imports no torch.

Each mirrors what the implementation accepts; ``tests/test_cli.py`` checks they agree.
"""
from __future__ import annotations

from typing import Dict, Tuple

# = dcac_plugin.speed.performance.AMP_CHOICES (train.amp and dcac bench train --amp).
AMP_CHOICES: Tuple[str, ...] = ("auto", "off", "bf16", "fp16")
# = dcac_plugin.benchmarks.train_bench.SCHEDULES (dcac bench train --schedule).
BENCH_SCHEDULES: Tuple[str, ...] = ("turns", "sequential")
# = dcac_plugin.benchmarks.train_bench.LATENT_INPUTS (the second half of dcac bench train --settings AMP:LATENTS).
LATENT_INPUTS: Tuple[str, ...] = ("cache", "encode")
# The runs `dcac demo` does, in this order, each from the shipped config demo_<run>: torchreid's softmax engine
# and dcac on OSNet-x0.25, then baseline and dcac on the tiny CLIP ViT.
DEMO_RUNS: Tuple[str, ...] = ("softmax", "dcac_osnet", "baseline", "dcac")
# What each demo run trains, for `dcac demo --help`.
DEMO_RUN_SUMMARIES: Dict[str, str] = {
    "softmax": "engine softmax (torchreid's) on osnet_x0_25",
    "dcac_osnet": "engine dcac on osnet_x0_25",
    "baseline": "engine baseline on the tiny CLIP ViT",
    "dcac": "engine dcac on the tiny CLIP ViT",
}
# = the names registered in dcac_plugin.registry.ENGINES (config key `engine`), with what each trains.
ENGINE_SUMMARIES: Dict[str, str] = {
    "softmax": "torchreid's own engine: ID loss",
    "triplet": "torchreid's own engine: ID + triplet loss",
    "baseline": "CLIP ViT + label-smoothed ID loss + PCL (paper eq. 5-8)",
    "dcac": "baseline + the LoRA-adapted Stable Diffusion feedback (eq. 9-13)",
}
# = the top-level scalar keys and the sections of dcac_config.defaults.get_default_config(): a command-line word
# that is one of CONFIG_KEYS or reads SECTION.key starts the KEY VALUE overrides (dcac_cli.overrides).
CONFIG_KEYS: Tuple[str, ...] = ("use_gpu", "engine")
CONFIG_SECTIONS: Tuple[str, ...] = ("model", "data", "market1501", "cuhk03", "msmt17", "sampler", "video", "train", "sgd",
                                    "rmsprop", "adam", "loss", "test", "dcac")
# The shipped run lists' names (paper tables) that `dcac experiments` takes, as its help names them.
RUN_LISTS: Tuple[str, ...] = ("table2", "table3", "table4", "table5", "table7", "table9", "table10", "toolbox", "classical",
                             "released")
