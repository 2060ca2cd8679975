"""The configs of every protocol and ablation of the paper, generated from one place.

``configs/paper/`` (package data; the repository's top-level ``configs/`` points there) holds
what :func:`render_paper_configs` returns; ``scripts/make_paper_configs.py`` rewrites it and a
test checks that the shipped files are exactly these, so the hyper-parameter rules of section
5.2 (LoRA rank and tau_c by source) live in :mod:`dcac_config.generators.protocols` only.
"""
from __future__ import annotations

import os
from typing import Dict, List

from .classical import render_classical_configs
from .protocols import MULTI_SOURCE_SETTINGS, SINGLE_SOURCE_PAIRS, lora_rank_for
from .released import render_released_configs
from .rendering import ABLATION_SETTINGS, ABLATIONS, PAPER_CONFIG_DIR, TABLE_OF_SOURCE, _stem, render_config
from .toolbox import render_toolbox_configs


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


__all__ = ["render_paper_configs", "write_paper_configs"]
