"""Configs that put torchreid's own models beside DCAC on the paper's single-source pairs:
``toolbox/{softmax,baseline,dcac}_{model}_{source}_to_{target}.yaml`` and the run list ``toolbox``.

For each model, three runs on the same data protocol (the paper's splits, MSMT17 with its val
images, CUHK03-NP detected):

- ``softmax``: torchreid's own recipe for that model, as its repository ships it (the file
  named in :data:`TORCHREID_RECIPES`): optimiser, learning rate, epochs, batch, classifier-only
  warm-up (``fixbase_epoch``), schedule, augmentation, test metric.
- ``baseline`` and ``dcac``: the paper's recipe (PK sampler 16 x 4, 60 epochs, warm-up multi-step
  schedule, flip + pad-crop + erasing, label smoothing, PCL, LoRA rank and tau_c by source), with
  three values from the model's side: the optimiser and learning rate of torchreid's recipe (the
  paper's Adam at 5e-6 is tuned to fine-tune a CLIP ViT and would hardly move an ImageNet CNN) and
  ImageNet's mean and standard deviation (the statistics the model's pretrained weights expect;
  the paper's 0.5 are CLIP's side).
"""
from __future__ import annotations

from typing import Dict, List

from .protocols import SINGLE_SOURCE_PAIRS, condition_temperature_for, lora_rank_for, setting_name
from .rendering import data_protocol_lines, diffusion_source_lines, resize_at_test_lines, with_run_list, yaml_list

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TOOLBOX_ENGINES = ("softmax", "baseline", "dcac")

# torchreid's recipe per model: deep-person-reid 1.4.0's configs/<file>, the values it sets.
TORCHREID_RECIPES: Dict[str, Dict[str, object]] = {
    "osnet_ain_x1_0": {
        "file": "configs/im_osnet_ain_x1_0_softmax_256x128_amsgrad_cosine.yaml",
        "optim": "amsgrad", "lr": 0.0015, "max_epoch": 100, "batch_size": 64, "fixbase_epoch": 10,
        "lr_scheduler": "cosine", "stepsize": None, "transforms": ["random_flip", "color_jitter"],
        "test_batch_size": 300, "dist_metric": "cosine",
    },
    "resnet50": {
        # The file is named for ResNet-50 but sets model.name resnet50_fc512; its recipe is applied
        # here to resnet50 itself (2048-d feature, no fc layer).
        "file": "configs/im_r50_softmax_256x128_amsgrad.yaml",
        "optim": "amsgrad", "lr": 0.0003, "max_epoch": 60, "batch_size": 32, "fixbase_epoch": 5,
        "lr_scheduler": "single_step", "stepsize": [20], "transforms": ["random_flip"],
        "test_batch_size": 100, "dist_metric": "euclidean",
    },
}


def toolbox_config_name(engine: str, model: str, source: str, target: str) -> str:
    return f"toolbox/{engine}_{model}_{source}_to_{target}"


def _softmax_lines(recipe: Dict[str, object]) -> List[str]:
    """torchreid's recipe for the model, as its config file sets it."""
    lines = ["loss:", "  name: softmax", "  softmax:", "    label_smooth: True",
             "train:", f"  optim: {recipe['optim']}", f"  lr: {recipe['lr']}", f"  max_epoch: {recipe['max_epoch']}",
             f"  batch_size: {recipe['batch_size']}", f"  fixbase_epoch: {recipe['fixbase_epoch']}",
             "  open_layers: [classifier]", f"  lr_scheduler: {recipe['lr_scheduler']}"]
    if recipe["stepsize"]:
        lines.append(f"  stepsize: {yaml_list(recipe['stepsize'])}")
    lines += ["  print_freq: 50",
              "test:", f"  batch_size: {recipe['test_batch_size']}", f"  dist_metric: {recipe['dist_metric']}",
              "  eval_freq: 10",
              "dcac:", "  resize_interpolation: bilinear   # torchreid's Resize, in training and at test time"]
    return lines


def _paper_lines(engine: str, recipe: Dict[str, object], source: str) -> List[str]:
    """The paper's recipe (merged by the engine), with the model's optimiser, lr and statistics."""
    lines = ["train:",
             f"  optim: {recipe['optim']}   # torchreid's optimiser and lr for this model; the rest: the paper's",
             f"  lr: {recipe['lr']}", "  weight_decay: 0.0005", "  print_freq: 50",
             "test:", "  batch_size: 256", "  eval_freq: 10",
             "dcac:", *resize_at_test_lines(multi_source=False)]
    if engine == "dcac":
        lines += ["  finetune: lora", "  lora:", f"    rank: {lora_rank_for((source,))}", "  condition:",
                  f"    temperature: {condition_temperature_for((source,))}", *diffusion_source_lines()]
    return lines


def render_toolbox_config(engine: str, model: str, source: str, target: str) -> str:
    """One config: ``engine`` on torchreid's ``model``, trained on ``source``, tested on ``target``."""
    recipe = TORCHREID_RECIPES[model]
    name = toolbox_config_name(engine, model, source, target)
    what = {"softmax": f"torchreid's softmax engine and its recipe ({recipe['file']})",
            "baseline": "ID loss + PCL (eq. 8) with the paper's BNNeck head",
            "dcac": f"DCAC (LoRA rank {lora_rank_for((source,))}, tau_c {condition_temperature_for((source,))})"}[engine]
    lines = [f"# {model}: {what}; single-source {setting_name((source,), target)} ({name}).",
             f"# dcac train --config-file {name} --root /path/to/reid-data",
             f"engine: {engine}", "model:", f"  name: {model}", "  pretrained: True   # torchreid's ImageNet weights",
             "data:", f"  sources: [{source}]", f"  targets: [{target}]", "  height: 256", "  width: 128",
             "  workers: 8", f"  save_dir: log/{name}"]
    if engine == "softmax":
        lines += [f"  transforms: {yaml_list(recipe['transforms'])}"]
    else:
        lines += [f"  norm_mean: {yaml_list(IMAGENET_MEAN)}   # ImageNet's, as the model's pretrained weights",
                  f"  norm_std: {yaml_list(IMAGENET_STD)}"]
    lines += data_protocol_lines((source,), target)
    lines += _softmax_lines(recipe) if engine == "softmax" else _paper_lines(engine, recipe, source)
    return "\n".join(lines) + "\n"


def render_toolbox_configs() -> Dict[str, str]:
    """{path relative to configs/paper: text}: every toolbox config and the run list ``toolbox``."""
    configs = {toolbox_config_name(engine, model, source, target): render_toolbox_config(engine, model, source, target)
               for model in TORCHREID_RECIPES for source, target in SINGLE_SOURCE_PAIRS for engine in TOOLBOX_ENGINES}
    return with_run_list(configs, "toolbox", (
        "# torchreid's models under torchreid's softmax engine, our baseline and dcac, on the paper's single-source\n"
        "# pairs: dcac experiments --root DATA toolbox\n"
        "# (or, in a checkout: dcac experiments --root DATA configs/lists/toolbox.txt)\n"))


__all__ = ["TORCHREID_RECIPES", "render_toolbox_config", "render_toolbox_configs", "toolbox_config_name"]
