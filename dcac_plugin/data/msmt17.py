"""MSMT17's whole training set (``list_train.txt`` + ``list_val.txt``) through torchreid's reader.

The paper (Table 1) and the authors' code train on all 32,621 training images of MSMT17's
1,041 training identities. torchreid's ``MSMT17`` reads ``list_train.txt`` only (30,248
images), keeping ``list_val.txt`` (2,373 images of the same identities) apart for the
"conventional" setting; its ``combineall`` adds the val images but also merges query and
gallery into training. :class:`MSMT17TrainVal` is torchreid's reader with the val list added
to the training list and nothing else changed; :func:`msmt17_train_with_val` makes torchreid's
``msmt17`` name build it while a data manager is constructed (config key
``msmt17.train_with_val``). The list pids are the training identities 0..1040 in both files,
so the union needs no relabelling.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, List, Tuple

from torchreid import data as reid_data

from ..utils.swap import swapped
from ..utils.toolbox_tables import image_dataset_table

DATASET_NAME = "msmt17"


class MSMT17TrainVal(reid_data.datasets.image.MSMT17):
    """torchreid's MSMT17 whose training split is ``list_train.txt`` + ``list_val.txt``.

    With ``combineall`` torchreid adds the val images to training itself, so they are not
    added a second time here.
    """

    def __init__(self, root: str = "", combineall: bool = False, **kwargs) -> None:
        self.adds_val = not combineall
        super().__init__(root=root, combineall=combineall, **kwargs)

    def process_dir(self, dir_path: str, list_path: str) -> List[Tuple[str, int, int]]:
        """torchreid's list reader; for the training list, the val list's images follow."""
        items = super().process_dir(dir_path, list_path)
        if self.adds_val and list_path == self.list_train_path:
            items += super().process_dir(dir_path, self.list_val_path)
        return items


def msmt17_train_with_val(enabled: bool) -> ContextManager[None]:
    """While active (and ``enabled``), torchreid's dataset table builds :class:`MSMT17TrainVal`
    for ``msmt17``; the previous class is put back afterwards, also when building fails."""
    return swapped(image_dataset_table(), DATASET_NAME, MSMT17TrainVal) if enabled else contextlib.nullcontext()


__all__ = ["MSMT17TrainVal", "msmt17_train_with_val"]
