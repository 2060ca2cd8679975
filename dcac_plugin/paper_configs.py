"""The configs of every protocol and ablation of the paper, generated from one place.

``configs/paper/`` (package data; the repository's top-level ``configs/`` points there) holds
what :func:`render_paper_configs` returns; ``scripts/make_paper_configs.py`` rewrites it and a
test checks that the shipped files are exactly these, so the hyper-parameter rules of section
5.2 (LoRA rank and tau_c by source) live in :mod:`dcac_plugin.protocols` only.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

from .protocols import (ABBREVIATIONS, MULTI_SOURCE_SETTINGS, SINGLE_SOURCE_PAIRS, condition_temperature_for,
                        lora_rank_for, setting_name)

PAPER_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "paper")
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# Ablations run on MA->MS and MS->MA (paper Tables 5-10).
ABLATION_SETTINGS: Tuple[Tuple[str, str], ...] = (("market1501", "msmt17"), ("msmt17", "market1501"))
ABLATIONS: Dict[str, Tuple[str, Sequence[Tuple[str, Dict[str, object]]]]] = {
    # table: (what it varies, [(file suffix, the one dcac setting it changes)])
    "table5": ("diffusion fine-tuning", [(f"finetune-{m}", {"finetune": m})
                                         for m in ("frozen", "partial1", "partial2", "full", "scratch")]),
    "table7": ("conditioning scheme", [(f"condition-{m}", {"mode": m}) for m in ("instance", "class")]),
    "table9": ("LoRA rank", [(f"rank-{r}", {"rank": r}) for r in (8, 16, 32, 64)]),
    "table10": ("condition transform", [(f"transform-{t}", {"transform": t}) for t in ("silu", "bn", "mlp")]),
}
TABLE_OF_SOURCE = {"market1501": "Table 2", "dukemtmcreid": "Table 2", "msmt17": "Table 3", "cuhk03": "Table 3"}


def _stem(engine: str, sources: Sequence[str], target: str) -> str:
    source = "multi" if len(sources) > 1 else sources[0]
    return f"{engine}_{source}_to_{target}"


def yaml_list(values: Sequence[object]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def data_protocol_lines(sources: Sequence[str], target: str) -> List[str]:
    """The paper's splits: CUHK03-NP detected, MSMT17 with its val images in training."""
    lines = []
    if "cuhk03" in list(sources) + [target]:
        lines += ["cuhk03:", "  labeled_images: False   # CUHK03-NP detected, as in the paper",
                  "  classic_split: False     # the new protocol (767 / 700 identities)"]
    if "msmt17" in sources:
        lines += ["msmt17:", "  train_with_val: True   # list_train + list_val: 32,621 images, 1,041 ids (Table 1)"]
    return lines


def diffusion_source_lines() -> List[str]:
    """``dcac.diffusion.pretrained``: SD1.5 on the hub, with the other forms it takes."""
    return ["  diffusion:", "    # a Hugging Face id, a local diffusers folder, or /models/v1-5-pruned.safetensors",
            f"    pretrained: {SD15}"]


def resize_at_test_lines(multi_source: bool) -> List[str]:
    """The test-time resize of the authors' code: its single-source test loader is bilinear
    (torchvision's default), its multi-source one bicubic; training and the memory are bicubic."""
    if multi_source:
        return ["  test_resize_interpolation: bicubic   # the authors' multi-source test loader, as in training"]
    return ["  test_resize_interpolation: bilinear  # the authors' single-source test loader (training: bicubic)"]


def head_lines(title: str, where: str, engine: str) -> List[str]:
    """A paper config's first lines: what it runs, how, its engine and the paper's model (CLIP ViT-B/16)."""
    return [f"# {title} ({where}).", f"# dcac train --config-file configs/{where}.yaml --root /path/to/reid-data",
            f"engine: {engine}", "model:", "  name: clip_vit_b16", "  pretrained: True"]


def render_config(engine: str, sources: Sequence[str], target: str, where: str, ablation: Optional[Dict[str, object]] = None,
                  title: str = "") -> str:
    """One config: the paper recipe (applied by ``engine``) plus the source-dependent values;
    ``ablation`` changes one dcac setting (``finetune``, ``rank``, condition ``mode`` or ``transform``)."""
    ablation = ablation or {}
    setting = setting_name(sources, target)
    rank, tau = ablation.get("rank", lora_rank_for(sources)), condition_temperature_for(sources)
    kind = "multi-source (leave-one-out)" if len(sources) > 1 else "single-source"
    what = title or ("CLIP ViT-B/16 + ID loss + PCL (eq. 8)" if engine == "baseline" else
                     f"DCAC: LoRA rank {rank}, tau_c {tau}")
    save_dir = f"log/{where}" if ablation else f"log/{engine}/{_stem(engine, sources, target).split('_', 1)[1]}"
    lines = [
        *head_lines(f"{what}; {kind} {setting}", where, engine),
        "data:",
        f"  sources: {yaml_list(sources)}",
        f"  targets: {yaml_list([target])}",
        "  workers: 8",
        f"  save_dir: {save_dir}",
        "train:",
        "  print_freq: 50",
        "test:",
        "  batch_size: 256",
        "  eval_freq: 10",
    ]
    lines += data_protocol_lines(sources, target)
    lines += ["dcac:", "  clip_weights: openai   # or a local file, e.g. /models/ViT-B-16.pt"]
    lines += resize_at_test_lines(len(sources) > 1)
    if engine == "dcac":
        lines += [f"  finetune: {ablation.get('finetune', 'lora')}", "  lora:", f"    rank: {rank}", "  condition:"]
        lines += [f"    {key}: {ablation[key]}" for key in ("mode", "transform") if key in ablation]
        lines += [f"    temperature: {tau}"] + diffusion_source_lines()
    return "\n".join(lines) + "\n"


def with_run_list(configs: Dict[str, str], name: str, header: str) -> Dict[str, str]:
    """``configs`` ({path without .yaml: text}) as files, and the run list ``lists/<name>.txt``:
    ``header`` (comment lines), then the configs in their order, relative to the list."""
    files = {where + ".yaml": text for where, text in configs.items()}
    files[f"lists/{name}.txt"] = header + "".join(f"../{where}.yaml\n" for where in configs)
    return files


def render_paper_configs() -> Dict[str, str]:
    """{path relative to configs/paper: text} for every config and run list (the toolbox
    group's from :mod:`dcac_plugin.toolbox_configs`)."""
    files: Dict[str, str] = {}
    lists: Dict[str, List[str]] = {"table2": [], "table3": [], "table4": []}
    for sources, target in [((s,), t) for s, t in SINGLE_SOURCE_PAIRS] + MULTI_SOURCE_SETTINGS:
        folder = "multi" if len(sources) > 1 else "single"
        table = "table4" if len(sources) > 1 else TABLE_OF_SOURCE[sources[0]].lower().replace(" ", "")
        for engine in ("baseline", "dcac"):
            where = f"{folder}/{_stem(engine, sources, target)}"
            files[where + ".yaml"] = render_config(engine, sources, target, where)
            lists[table].append(f"../{where}.yaml")
    for table, (varies, variants) in ABLATIONS.items():
        lists[table] = []
        for source, target in ABLATION_SETTINGS:
            lists[table] += [f"../single/{_stem(e, (source,), target)}.yaml" for e in ("baseline", "dcac")]
            for suffix, ablation in variants:
                if ablation.get("rank") == lora_rank_for((source,)):
                    continue  # the default rank is the main dcac config
                where = f"ablations/{_stem('dcac', (source,), target)}_{suffix}"
                files[where + ".yaml"] = render_config("dcac", (source,), target, where, ablation,
                                                       title=f"DCAC ablation ({table}, {varies}): {suffix}")
                lists[table].append(f"../{where}.yaml")
    for table, entries in lists.items():
        header = (f"# Runs of the paper's {table.replace('table', 'Table ')}: dcac experiments --root DATA {table}\n"
                  f"# (or, in a checkout: dcac experiments --root DATA configs/lists/{table}.txt)\n")
        files[f"lists/{table}.txt"] = header + "\n".join(entries) + "\n"
    from .toolbox_configs import render_toolbox_configs  # it renders with this module's helpers
    from .classical_configs import render_classical_configs  # the authors' other benchmark
    from .released_configs import render_released_configs  # the authors' released models, evaluated

    files.update(render_toolbox_configs())
    files.update(render_classical_configs())
    files.update(render_released_configs())
    return files


def write_paper_configs(folder: str = PAPER_CONFIG_DIR) -> List[str]:
    """Write :func:`render_paper_configs` under ``folder``; returns the paths written."""
    written = []
    for relative, text in sorted(render_paper_configs().items()):
        path = os.path.join(folder, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        written.append(path)
    return written


__all__ = ["ABBREVIATIONS", "ABLATIONS", "PAPER_CONFIG_DIR", "render_config", "render_paper_configs",
           "head_lines", "with_run_list", "write_paper_configs"]
