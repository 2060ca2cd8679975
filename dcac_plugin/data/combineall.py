"""torchreid's ``data.combineall`` (the DCAC authors' ``all_for_train``) with the combined
training set's cameras counted.

``combineall`` adds a source's query and gallery images to its training set. torchreid counts a
dataset's training cameras before combining and not again, and offsets the next source's cameras
by that count: where the gallery has cameras the training split lacks (CUHK02's test pair P5 has
two), the next source's cameras take the same ids. The authors' readers count the cameras of the
combined set, as :func:`combineall_counts_cameras` makes torchreid do while a data manager is
constructed.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

from torchreid import data as reid_data

from ..utils.swap import swapped


def combineall_counts_cameras(enabled: bool) -> ContextManager[None]:
    """While active (and ``enabled``), torchreid's ``combine_all`` also recounts ``num_train_cams``."""
    if not enabled:
        return contextlib.nullcontext()
    original = reid_data.Dataset.combine_all

    def combine_all(self) -> None:
        original(self)
        self.num_train_cams = self.get_num_cams(self.train)

    return swapped(reid_data.Dataset, "combine_all", combine_all)


__all__ = ["combineall_counts_cameras"]
