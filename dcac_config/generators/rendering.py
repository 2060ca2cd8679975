"""What every config generator shares: the paper's settings and the YAML lines they write.

The generators of each group (:mod:`.paper`, :mod:`.toolbox`, :mod:`.classical`,
:mod:`.released`) import these helpers from here, never from each other.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

from .protocols import condition_temperature_for, lora_rank_for, setting_name

# configs/paper/ of this package (package data; the repository's top-level configs/ points there).
PAPER_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "paper")
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
