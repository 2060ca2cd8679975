"""The fixed names the ``dcac`` parsers offer, kept here so that building them imports no torch.

Each mirrors what the implementation accepts; ``tests/test_cli.py`` checks they agree.
"""
from __future__ import annotations

from typing import Dict, Tuple

# = dcac_plugin.performance.AMP_CHOICES (train.amp and dcac bench train --amp).
AMP_CHOICES: Tuple[str, ...] = ("auto", "off", "bf16", "fp16")
# The engines `dcac demo` runs, each from the shipped config demo_<engine>.
DEMO_ENGINES: Tuple[str, ...] = ("softmax", "baseline", "dcac")
# = the names registered in dcac_plugin.registry.ENGINES (config key `engine`), with what each trains.
ENGINE_SUMMARIES: Dict[str, str] = {
    "softmax": "torchreid's own engine: ID loss",
    "triplet": "torchreid's own engine: ID + triplet loss",
    "baseline": "CLIP ViT + label-smoothed ID loss + PCL (paper eq. 5-8)",
    "dcac": "baseline + the LoRA-adapted Stable Diffusion feedback (eq. 9-13)",
}
# = the top-level scalar keys and the sections of dcac_plugin.config.get_default_config(): a command-line word
# that is one of CONFIG_KEYS or reads SECTION.key starts the KEY VALUE overrides (dcac_cli.overrides).
CONFIG_KEYS: Tuple[str, ...] = ("use_gpu", "engine")
CONFIG_SECTIONS: Tuple[str, ...] = ("model", "data", "market1501", "cuhk03", "msmt17", "sampler", "video", "train", "sgd",
                                    "rmsprop", "adam", "loss", "test", "dcac")
# The shipped run lists' names (paper tables) that `dcac experiments` takes, as its help names them.
RUN_LISTS: Tuple[str, ...] = ("table2", "table3", "table4", "table5", "table7", "table9", "table10")
