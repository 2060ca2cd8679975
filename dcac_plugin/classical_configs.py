"""Configs of the classical multi-source DG benchmark, the authors' other benchmark:
``classical/{baseline,dcac}_classical_to_{ilids,prid,grid,viper}.yaml`` and the run list ``classical``.

As the authors' ``ClassicalMultiSourceDG`` builds it: training on the training splits of
Market1501, DukeMTMC-reID, CUHK02, CUHK03-NP (detected) and CUHK-SYSU, identities and cameras
offset in that order (torchreid offsets them in the order of ``data.sources``), testing on each of
iLIDS, PRID, GRID and VIPeR, over its random splits with the mean reported (``test.split_ids``, see
:mod:`dcac_plugin.data.random_splits`). Their ``all_for_train`` option, which trains on the
sources' query and gallery images too, is torchreid's ``data.combineall``, written out with the
authors' default (False). The rest is the paper's multi-source setting: LoRA rank 32 and tau_c 1.0
(section 5.2), the recipe of the engine, the authors' multi-source test-time resize (bicubic).
"""
from __future__ import annotations

from typing import Dict, List

from .paper_configs import render_config
from .protocols import CLASSICAL_SOURCES, CLASSICAL_TARGETS

CLASSICAL_KIND = "classical multi-source DG"
CLASSICAL_LINES = {
    "data": ["  combineall: False   # the authors' all_for_train: True also trains on the sources' query and gallery"],
    "test": ["  split_ids: []   # each target's standard random splits (0..9; VIPeR 0, 2, ..., 18), mean reported"],
}


def classical_config_name(engine: str, target: str) -> str:
    return f"classical/{engine}_classical_to_{target}"


def render_classical_configs() -> Dict[str, str]:
    """{path relative to configs/paper: text}: a baseline and a dcac config per target, and the run list."""
    files: Dict[str, str] = {}
    entries: List[str] = []
    for target in CLASSICAL_TARGETS:
        for engine in ("baseline", "dcac"):
            where = classical_config_name(engine, target)
            files[where + ".yaml"] = render_config(engine, CLASSICAL_SOURCES, target, where, kind=CLASSICAL_KIND,
                                                   extra=CLASSICAL_LINES)
            entries.append(f"../{where}.yaml")
    files["lists/classical.txt"] = (
        "# The classical multi-source DG benchmark (MA+D+C2+C3+CS -> iLIDS, PRID, GRID, VIPeR; the authors' code, not\n"
        "# in the paper's tables): dcac experiments --root DATA classical\n"
        "# (or, in a checkout: dcac experiments --root DATA configs/lists/classical.txt)\n" + "\n".join(entries) + "\n")
    return files


__all__ = ["CLASSICAL_KIND", "classical_config_name", "render_classical_configs"]
