"""CUHK02 and CUHK-SYSU through torchreid's readers, with training labels that do not change
between processes.

torchreid's ``CUHK02`` and ``CUHKSYSU`` number their training identities by iterating a set of
string pids, whose order Python's hash randomisation changes in every process: the same data gets
other labels in each run. A resumed run (or a second seeded one) then reads its checkpoint's
classifier rows, PCL prototypes and ID prompts for other persons than they were trained on. The
classes here are torchreid's readers with their lists sorted by path and the training labels
renumbered in the order of each identity's first image path, so labels depend on the files
only; :func:`stable_identity_labels` makes torchreid's names build them while a data manager is
constructed. Everything else (layout, which images, pids kept in query and gallery) is torchreid's.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Sequence, Tuple

from torchreid import data as reid_data

from ..utils.swap import swapped
from ..utils.toolbox_tables import image_dataset_table


def stable_labels(items: Sequence[tuple]) -> List[tuple]:
    """``(path, label, camid, ...)`` items sorted by path, the labels renumbered 0..N-1 in the
    order each identity's first image comes in (a label stands for one identity of one dataset)."""
    items = sorted(items, key=lambda item: item[0])
    order: dict = {}
    for item in items:
        order.setdefault(item[1], len(order))
    return [(item[0], order[item[1]], *item[2:]) for item in items]


class CUHK02StableLabels(reid_data.datasets.image.CUHK02):
    """torchreid's CUHK02 (P1-P4 train, P5 query/gallery) with stable training labels."""

    def get_data_list(self) -> Tuple[list, list, list]:
        train, query, gallery = super().get_data_list()
        return stable_labels(train), sorted(query), sorted(gallery)


class CUHKSYSUStableLabels(reid_data.datasets.image.CUHKSYSU):
    """torchreid's CUHK-SYSU (training only) with stable training labels."""

    def process_dir(self, dirname: str) -> list:
        return stable_labels(super().process_dir(dirname))


STABLE_READERS = {"cuhk02": CUHK02StableLabels, "cuhksysu": CUHKSYSUStableLabels}


@contextlib.contextmanager
def stable_identity_labels() -> Iterator[None]:
    """While active, torchreid's dataset table builds the classes above for ``cuhk02`` and
    ``cuhksysu``; torchreid's own are put back afterwards, also when building fails."""
    with contextlib.ExitStack() as stack:
        for name, cls in STABLE_READERS.items():
            stack.enter_context(swapped(image_dataset_table(), name, cls))
        yield


__all__ = ["CUHK02StableLabels", "CUHKSYSUStableLabels", "STABLE_READERS", "stable_identity_labels", "stable_labels"]
