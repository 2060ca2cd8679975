"""Configs that evaluate the authors' released models: ``released/source_<sources>.yaml`` and the
run list ``released``.

The authors released one trained DCAC model per paper setting, named after its sources:
``source_ma.pth``, ``source_d.pth``, ``source_ms.pth``, ``source_c3.pth``, ``source_ma+d+ms.pth``,
``source_ma+d+c3.pth``, ``source_ma+ms+c3.pth`` and ``source_d+ms+c3.pth`` (ma Market1501,
d DukeMTMC-reID, ms MSMT17, c3 CUHK03-NP). Each config evaluates one of them (``test.evaluate``)
on every target of its protocol: a single-source model on the other three datasets (Tables 2
and 3), a leave-one-out model on the held-out one (Table 4). ``model.load_weights`` names the
authors' file and ``model.load_weights_dir`` (given on the command line) the folder holding them.

Their checkpoints hold the whole Re-ID encoder under their key names, which
:mod:`dcac_plugin.utils.checkpoint` reads (their diffusion part is ignored), so no CLIP weights are read
(``model.pretrained False``) and no diffusion model is built. The data protocol (CUHK03-NP
detected, MSMT17 with its val images: the identities the classifier was trained on), the
test-time resize and the source's LoRA rank and tau_c (which make each run the paper's ``dcac``
row in ``dcac experiments``' table) are those of the training configs.
"""
from __future__ import annotations

import os.path as osp
from typing import Dict, Sequence

from .protocols import (ABBREVIATIONS, RELEASED_SETTINGS, condition_temperature_for, lora_rank_for,
                        released_checkpoint_name)
from .rendering import TABLE_OF_SOURCE, data_protocol_lines, resize_at_test_lines, with_run_list, yaml_list


def released_config_name(sources: Sequence[str]) -> str:
    return f"released/{osp.splitext(released_checkpoint_name(sources))[0]}"


def render_released_config(sources: Sequence[str], targets: Sequence[str]) -> str:
    """An evaluation-only config of the authors' model trained on ``sources``, on ``targets``."""
    name, where = released_checkpoint_name(sources), released_config_name(sources)
    multi_source = len(sources) > 1
    table = "Table 4" if multi_source else TABLE_OF_SOURCE[sources[0]]
    trained_on = "+".join(ABBREVIATIONS[s] for s in sources)
    tested_on = ", ".join(ABBREVIATIONS[t] for t in targets)
    # The CUHK03-NP lines are written when CUHK03 is a source or any of the targets.
    protocol_target = "cuhk03" if "cuhk03" in targets else targets[0]
    lines = [
        f"# The authors' released model {name} (DCAC trained on {trained_on}), evaluated on {tested_on} ({table}).",
        f"# dcac train --config-file configs/{where}.yaml --root /path/to/reid-data "
        "model.load_weights_dir /path/to/checkpoints",
        "engine: dcac",
        "model:",
        "  name: clip_vit_b16",
        "  pretrained: False   # every encoder weight comes from the checkpoint",
        f"  load_weights: {name}   # the authors' file, read from model.load_weights_dir",
        "data:",
        f"  sources: {yaml_list(sources)}   # what it was trained on: the identities of its classifier",
        f"  targets: {yaml_list(targets)}",
        "  workers: 8",
        f"  save_dir: log/{where}",
        "test:",
        "  evaluate: True",
        "  batch_size: 256",
        *data_protocol_lines(sources, protocol_target),
        "dcac:",
        *resize_at_test_lines(multi_source),
        "  lora:",
        f"    rank: {lora_rank_for(sources)}",
        "  condition:",
        f"    temperature: {condition_temperature_for(sources)}",
    ]
    return "\n".join(lines) + "\n"


def render_released_configs() -> Dict[str, str]:
    """{path relative to configs/paper: text}: one config per released model, and the run list."""
    configs = {released_config_name(sources): render_released_config(sources, targets)
               for sources, targets in RELEASED_SETTINGS}
    return with_run_list(configs, "released", (
        "# The authors' eight released models, each evaluated on the targets of its protocol (Tables 2-4), "
        "no training:\n"
        "# dcac experiments --root DATA --out log/released released model.load_weights_dir /path/to/checkpoints\n"
        "# (or, in a checkout: ... configs/lists/released.txt ...)\n"))


__all__ = ["released_config_name", "render_released_config", "render_released_configs"]
