"""The paper's evaluation protocols and the hyper-parameters that depend on the source domains.

Section 5.1-5.2 and the reference notes: single-source (train on one of the four datasets,
test on each other: 12 pairs) and multi-source leave-one-out (train on the training splits
of three, test on the fourth: 4 settings); LoRA rank and condition temperature follow the
source domains.
"""
from __future__ import annotations

from itertools import permutations
from typing import Dict, List, Sequence, Tuple

# torchreid's dataset names of the paper's four datasets, and the paper's abbreviations.
DATASETS: Tuple[str, ...] = ("market1501", "dukemtmcreid", "msmt17", "cuhk03")
ABBREVIATIONS: Dict[str, str] = {"market1501": "MA", "dukemtmcreid": "D", "msmt17": "MS", "cuhk03": "C3",
                                 # the classical multi-source DG benchmark's other datasets
                                 "cuhk02": "C2", "cuhksysu": "CS", "ilids": "iLIDS", "prid": "PRID", "grid": "GRID",
                                 "viper": "VIPeR"}
# Other registered layouts of the same datasets (the reference's folders) count as the same domain.
SAME_DOMAIN: Dict[str, str] = {"msmt17_folder": "msmt17", "cuhk03_np": "cuhk03"}

SINGLE_SOURCE_PAIRS: List[Tuple[str, str]] = list(permutations(DATASETS, 2))
MULTI_SOURCE_SETTINGS: List[Tuple[Tuple[str, ...], str]] = [
    (tuple(d for d in DATASETS if d != target), target) for target in DATASETS]

# The classical multi-source DG benchmark, as the authors' code builds it (ClassicalMultiSourceDG in
# engine/datasets/multi_source_dg.py; not in the paper's tables): the training splits of five
# datasets, identities and cameras offset in this order (torchreid offsets them in the order of
# data.sources), tested on each of four small datasets over their random splits.
CLASSICAL_SOURCES: Tuple[str, ...] = ("market1501", "dukemtmcreid", "cuhk02", "cuhk03", "cuhksysu")
CLASSICAL_TARGETS: Tuple[str, ...] = ("ilids", "prid", "grid", "viper")

# The authors' released models (their README's Checkpoints table): one per paper setting, named
# after its sources, each evaluated on the targets of its protocol (Tables 2-4).
RELEASED_SETTINGS: List[Tuple[Tuple[str, ...], Tuple[str, ...]]] = (
    [((source,), tuple(t for t in DATASETS if t != source)) for source in DATASETS]
    + [(sources, (target,)) for sources, target in MULTI_SOURCE_SETTINGS])


def released_checkpoint_name(sources: Sequence[str]) -> str:
    """The file name of the authors' model trained on ``sources``, e.g. ``source_ma+d+ms.pth``."""
    return "source_" + "+".join(ABBREVIATIONS[domain(s)].lower() for s in sources) + ".pth"


def domain(name: str) -> str:
    """The paper dataset a registered dataset name stands for."""
    return SAME_DOMAIN.get(name, name)


def lora_rank_for(sources: Sequence[str]) -> int:
    """Section 5.2: r = 8 for a single small source (MA, D, C3), 32 for MSMT17 and multi-source."""
    domains = {domain(s) for s in sources}
    return 32 if len(domains) > 1 or "msmt17" in domains else 8


def condition_temperature_for(sources: Sequence[str]) -> float:
    """Section 5.2: tau_c = 0.1 for CUHK03-NP, 0.6 for Market1501 / DukeMTMC-reID, 1.0 for
    MSMT17 and multi-source."""
    domains = {domain(s) for s in sources}
    if len(domains) > 1 or "msmt17" in domains:
        return 1.0
    return 0.1 if "cuhk03" in domains else 0.6


def setting_name(sources: Sequence[str], target: str) -> str:
    """The paper's notation, e.g. ``MA->MS`` or ``MA+D+C3->MS``."""
    return "+".join(ABBREVIATIONS.get(domain(s), s) for s in sources) + "->" + ABBREVIATIONS.get(domain(target), target)


PAPER_MODEL = "clip_vit_b16"


def paper_variant(cfg) -> str:
    """Which row of the paper's tables a config reproduces: ``baseline``, ``dcac``, or ``dcac``
    with the settings that differ from the paper's defaults for its sources, e.g.
    ``dcac finetune=frozen``, ``dcac condition=instance``, ``dcac transform=silu``, ``dcac rank=16``;
    another model than the paper's CLIP ViT-B/16 is named too (``dcac model=osnet_ain_x1_0``: no paper row)."""
    model = [] if cfg.model.name == PAPER_MODEL else [f"model={cfg.model.name}"]
    if cfg.engine != "dcac":
        return " ".join([cfg.engine] + model)
    changes = model
    if cfg.dcac.finetune != "lora":
        changes.append(f"finetune={cfg.dcac.finetune}")
    if cfg.dcac.condition.mode != "correlation":
        changes.append(f"condition={cfg.dcac.condition.mode}")
    if cfg.dcac.condition.transform != "none":
        changes.append(f"transform={cfg.dcac.condition.transform}")
    if cfg.dcac.finetune == "lora" and cfg.dcac.lora.rank != lora_rank_for(cfg.data.sources):
        changes.append(f"rank={cfg.dcac.lora.rank}")
    return " ".join(["dcac"] + changes)
