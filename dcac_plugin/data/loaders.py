"""Plain loaders over (path, pid, camid, ...) lists, for passes outside the training loop
(memory initialisation, feature extraction)."""
from __future__ import annotations

from typing import Callable, Sequence

from torch.utils.data import DataLoader, Dataset

from torchreid import utils as reid_utils


class ImageListDataset(Dataset):
    """Items of a torchreid dataset list, read with torchreid's reader and one transform."""

    def __init__(self, items: Sequence[tuple], transform: Callable) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, pid, camid = self.items[index][:3]
        return {"img": self.transform(reid_utils.read_image(path)), "pid": pid, "camid": camid, "impath": path,
                "index": index}


def image_list_loader(items: Sequence[tuple], transform: Callable, batch_size: int, workers: int,
                      pin_memory: bool = False) -> DataLoader:
    """An ordered, non-dropping loader over ``items``."""
    return DataLoader(ImageListDataset(items, transform), batch_size=batch_size, shuffle=False,
                      num_workers=workers, pin_memory=pin_memory, drop_last=False)


def train_items(datamanager) -> list:
    """The (relabelled) training list behind a torchreid data manager's train loader."""
    return list(datamanager.train_loader.dataset.train)


__all__ = ["ImageListDataset", "image_list_loader", "train_items"]
