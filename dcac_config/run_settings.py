"""Is the run a folder holds the run asked for now? Its ``config.yaml`` against the config,
key by key.

Two commands ask: ``dcac experiments`` (a folder counts as done, or is continued, only when
its run has the settings asked for now) and ``model.resume`` (which keys a resume may change).
Keys fall into classes:

- where the run lives (:data:`RUN_PLACE`): never a difference between two configs of one run;
- how it runs (:data:`HOW_IT_RUNS`): speed, devices, logging, evaluation frequency; the
  result is the same run's, up to rounding;
- evaluation (:data:`EVALUATION`): what the tests measure, not what is trained;
- what a resume applies from this config (:data:`RESUME_APPLIES`): more epochs, another
  learning rate (scaled into the restored schedule), another precision;
- everything else (model, data, optimizer, schedule, losses, seed, the dcac section): a
  different run.
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import yaml
from yacs.config import CfgNode as CN

RUN_PLACE = ("data.save_dir", "data.root", "data.overwrite", "model.resume")
HOW_IT_RUNS = ("use_gpu", "data.workers", "data.skip_corrupt_images", "train.print_freq", "train.dist_backend",
               "train.dist_timeout_minutes", "train.dist_rendezvous_minutes", "train.gradient_checkpointing", "train.compile", "train.fused_lora",
               "train.cpu_matmul_convolutions", "train.deterministic", "test.eval_freq", "test.start_eval",
               "test.batch_size")
EVALUATION = ("test.", "data.targets", "cuhk03.use_metric_cuhk03", "market1501.use_500k_distractors")
RESUME_APPLIES = ("train.max_epoch", "train.lr", "train.base_lr_mult", "train.amp")
# Schedules whose state (restored from the checkpoint) spans train.max_epoch: extending a run
# would keep the old span, so a resume refuses another max_epoch with them.
SCHEDULES_SPANNING_MAX_EPOCH = ("cosine",)

Settings = Dict[str, Any]


class Difference(NamedTuple):
    """A key whose value differs: in the recorded run (``recorded``) and asked for now (``asked``)."""

    key: str
    recorded: Any
    asked: Any


def _flatten(tree: Any, prefix: str = "") -> Settings:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: Settings = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def settings_of(cfg: CN) -> Settings:
    """``cfg`` as dotted keys and the values its ``config.yaml`` records (read back from the dump,
    so that both sides of a comparison have the same types)."""
    return _flatten(yaml.safe_load(cfg.dump()))


def recorded_settings(config_path: str) -> Optional[Settings]:
    """The dotted settings of a run's ``config.yaml``, or None when it cannot be read as one."""
    try:
        with open(config_path, encoding="utf-8") as handle:
            tree = yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return _flatten(tree) if isinstance(tree, dict) else None


def in_class(key: str, keys: Sequence[str]) -> bool:
    """``key`` is one of ``keys`` or lies under one ending with a dot (``test.``)."""
    return any(key == entry or (entry.endswith(".") and key.startswith(entry)) for entry in keys)


def differences(recorded: Settings, asked: Settings, ignored: Sequence[str] = RUN_PLACE) -> List[Difference]:
    """The keys both configs have whose values differ, those in ``ignored`` aside. A key only one
    side has (added or removed by another version of this package) is not compared."""
    return [Difference(key, recorded[key], asked[key]) for key in asked
            if key in recorded and recorded[key] != asked[key] and not in_class(key, ignored)]


def _value(value: Any) -> str:
    """A value as config.yaml writes it (``0.001``, ``true``, ``[9, 20]``; ``''`` for an empty string)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).split("\n...")[0].strip()


def describe(found: Sequence[Difference], limit: int = 4) -> str:
    """``train.lr 0.001 in the run, 0.5 now; ...`` for the first ``limit``, then the count of the rest."""
    shown = "; ".join(f"{item.key} {_value(item.recorded)} in the run, {_value(item.asked)} now" for item in found[:limit])
    return shown + (f"; and {len(found) - limit} more" if len(found) > limit else "")


__all__ = ["Difference", "EVALUATION", "HOW_IT_RUNS", "RESUME_APPLIES", "RUN_PLACE", "SCHEDULES_SPANNING_MAX_EPOCH",
           "describe", "differences", "in_class", "recorded_settings", "settings_of"]
