"""Test datasets with several random splits (iLIDS, PRID, GRID, VIPeR), evaluated on each of them.

torchreid reads one split of these small datasets (``data.split_id``), but their protocol, the
one domain-generalisation papers report, is the mean over 10 random splits (torchreid's own
documentation says so too): for GRID the 10 partitions published in its
``features_and_partitions.mat``; for iLIDS and PRID the 10 random splits torchreid draws on first
use and keeps in the dataset folder (``splits.json``, ``splits_single_shot.json``); for VIPeR the 10
random partitions with camera A as query, torchreid's even split ids 0, 2, ..., 18 (its
``splits.json`` holds each partition twice, the odd id with the cameras swapped).

:func:`expand_split_targets` gives such a target one query/gallery loader pair per split id,
under the key ``<dataset>/split<id>`` of the data manager's ``test_loader`` and ``test_dataset``
(``test.split_ids`` chooses the ids; empty = the standard ones above). The engines evaluate every
key and record, under the dataset's own name, the mean over its splits with each split's figures
(:func:`~dcac_plugin.evaluation.mean_over_splits`).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

from dcac_config.values import SPLIT_COUNTS, STANDARD_SPLIT_IDS, check_split_ids, listed_ids

from ..utils.toolbox_tables import image_dataset_table
from .loaders import loader_like


def split_ids_for(dataset: str, requested: Sequence[int]) -> Tuple[int, ...]:
    """The split ids ``dataset`` is evaluated on: ``requested`` (``test.split_ids``) or its standard ones;
    () for a dataset with one fixed split."""
    if dataset not in SPLIT_COUNTS:
        return ()
    return tuple(int(i) for i in requested) or STANDARD_SPLIT_IDS[dataset]


def split_key(dataset: str, split_id: int) -> str:
    """The test-loader key of one split of ``dataset``, e.g. ``viper/split2``."""
    return f"{dataset}/split{split_id}"


def expand_split_targets(manager, root: str, requested: Sequence[int]) -> Dict[str, Tuple[str, int]]:
    """Replace each random-split target's query/gallery loaders in ``manager`` by one pair per
    split id (built like the manager's, with its test transform); returns and stores as
    ``manager.split_keys`` ``{key: (dataset, split id)}``. ``test_dataset[dataset]`` keeps the
    split torchreid built (``data.split_id``) for tools that show one split.
    """
    split_keys: Dict[str, Tuple[str, int]] = {}
    table = image_dataset_table()
    for dataset in list(manager.test_loader):
        ids = split_ids_for(dataset, requested)
        if not ids:
            continue
        loaders = manager.test_loader.pop(dataset)
        sizes = []
        for split_id in ids:
            key = split_key(dataset, split_id)
            manager.test_loader[key], manager.test_dataset[key] = {}, {}
            for mode in ("query", "gallery"):
                split = table[dataset](root=root, split_id=split_id, transform=manager.transform_te, mode=mode,
                                       verbose=False)
                manager.test_loader[key][mode] = loader_like(loaders[mode], split)
                manager.test_dataset[key][mode] = getattr(split, mode)
            split_keys[key] = (dataset, split_id)
            sizes.append((len(manager.test_dataset[key]["query"]), len(manager.test_dataset[key]["gallery"])))
        shown = ", ".join(f"{q}/{g}" for q, g in dict.fromkeys(sizes))
        print(f"{dataset}: evaluated on each of its splits {listed_ids(ids)} (query/gallery images: {shown}); "
              "the mean over them is its result (test.split_ids)")
    manager.split_keys = split_keys
    return split_keys


__all__ = ["SPLIT_COUNTS", "STANDARD_SPLIT_IDS", "check_split_ids", "expand_split_targets", "split_ids_for",
           "split_key"]
