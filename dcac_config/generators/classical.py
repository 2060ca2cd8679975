"""Configs of the classical multi-source DG benchmark, the authors' other benchmark:
``classical/{baseline,dcac}_classical.yaml`` and the run list ``classical``.

As the authors' ``ClassicalMultiSourceDG`` builds it: training on the training splits of
Market1501, DukeMTMC-reID, CUHK02, CUHK03-NP (detected) and CUHK-SYSU, identities and cameras
offset in that order (torchreid offsets them in the order of ``data.sources``), testing on each of
iLIDS, PRID, GRID and VIPeR over its random splits with the mean reported (``test.split_ids``, see
:mod:`dcac_plugin.data.random_splits`). Their class is built once per test dataset, on the same
training set; here one run trains once and is evaluated on all four (``data.targets``), a quarter
of the GPU time for the same model. Their ``all_for_train`` option, which trains on the sources'
query and gallery images too, is torchreid's ``data.combineall``, written out with the authors'
default (False). The rest is the paper's multi-source setting: LoRA rank 32 and tau_c 1.0
(section 5.2), the recipe of the engine, the authors' multi-source test-time resize (bicubic).
"""
from __future__ import annotations

from typing import Dict

from .protocols import ABBREVIATIONS, CLASSICAL_SOURCES, CLASSICAL_TARGETS, condition_temperature_for, lora_rank_for
from .rendering import (data_protocol_lines, diffusion_source_lines, head_lines, resize_at_test_lines, with_run_list,
                        yaml_list)


def classical_config_name(engine: str) -> str:
    return f"classical/{engine}_classical"


def render_classical_config(engine: str) -> str:
    """``engine`` (``baseline`` or ``dcac``) trained on the five sources, tested on the four targets."""
    where = classical_config_name(engine)
    rank, tau = lora_rank_for(CLASSICAL_SOURCES), condition_temperature_for(CLASSICAL_SOURCES)
    what = "CLIP ViT-B/16 + ID loss + PCL (eq. 8)" if engine == "baseline" else f"DCAC: LoRA rank {rank}, tau_c {tau}"
    setting = "+".join(ABBREVIATIONS[s] for s in CLASSICAL_SOURCES) + " -> " + ", ".join(
        ABBREVIATIONS[t] for t in CLASSICAL_TARGETS)
    lines = [
        *head_lines(f"{what}; classical multi-source DG {setting}", where, engine),
        "data:",
        f"  sources: {yaml_list(CLASSICAL_SOURCES)}   # identities and cameras offset in this order",
        f"  targets: {yaml_list(CLASSICAL_TARGETS)}   # one training, evaluated on each",
        "  combineall: False   # the authors' all_for_train: True also trains on the sources' query and gallery",
        "  workers: 8",
        f"  save_dir: log/{where}",
        "train:",
        "  print_freq: 50",
        "test:",
        "  batch_size: 256",
        "  eval_freq: 10",
        "  split_ids: []   # each target's standard random splits (0..9; VIPeR 0, 2, ..., 18), mean reported",
        *data_protocol_lines(CLASSICAL_SOURCES, CLASSICAL_TARGETS[0]),
        "dcac:",
        "  clip_weights: openai   # or a local file, e.g. /models/ViT-B-16.pt",
        *resize_at_test_lines(multi_source=True),
    ]
    if engine == "dcac":
        lines += ["  finetune: lora", "  lora:", f"    rank: {rank}", "  condition:", f"    temperature: {tau}",
                  *diffusion_source_lines()]
    return "\n".join(lines) + "\n"


def render_classical_configs() -> Dict[str, str]:
    """{path relative to configs/paper: text}: the baseline and dcac configs, and the run list."""
    configs = {classical_config_name(engine): render_classical_config(engine) for engine in ("baseline", "dcac")}
    return with_run_list(configs, "classical", (
        "# The classical multi-source DG benchmark (MA+D+C2+C3+CS -> iLIDS, PRID, GRID, VIPeR; the authors' code, not\n"
        "# in the paper's tables): dcac experiments --root DATA classical\n"
        "# (or, in a checkout: dcac experiments --root DATA configs/lists/classical.txt)\n"))


__all__ = ["classical_config_name", "render_classical_config", "render_classical_configs"]
