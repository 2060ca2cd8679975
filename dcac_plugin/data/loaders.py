"""Data loaders: torchreid's datasets and samplers, read with checked image decoding.

torchreid's ``ImageDataManager`` builds the datasets (the on-disk layouts, relabelling)
and its loaders; we rebuild the loaders around the same datasets so that a corrupt
image fails with its name instead of hanging torchreid's retry loop, unreadable files can
be skipped, and the training sampler can be the distributed one under torchrun.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Dict, Optional, Sequence

from torch.utils.data import DataLoader, Dataset, Sampler

from .images import ImageReadError, drop_unreadable, format_unreadable, read_image_checked, scan_images


class ImageListDataset(Dataset):
    """Items of a torchreid dataset list, read with the checked reader and one transform.

    ``unreadable_fix``, when given, is the fix an unreadable image's error names instead of a
    run's (``data.skip_corrupt_images``, which tools such as ``dcac extract`` do not take)."""

    def __init__(self, items: Sequence[tuple], transform: Callable, unreadable_fix: str = "") -> None:
        self.items = list(items)
        self.transform = transform
        self.unreadable_fix = unreadable_fix

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, pid, camid = self.items[index][:3]
        try:
            image = read_image_checked(path)
        except ImageReadError as error:
            if not self.unreadable_fix:
                raise
            raise ImageReadError.for_file(path, error.reason, self.unreadable_fix) from None
        return {"img": self.transform(image), "pid": pid, "camid": camid, "impath": path, "index": index}


class CheckedImageDataset(Dataset):
    """A torchreid ``ImageDataset`` whose images are read with :func:`read_image_checked`.

    Items are the same dicts torchreid's ``__getitem__`` returns; ``transform`` and the
    item lists (``data``, ``train``) are those of the wrapped dataset.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value) -> None:
        self.dataset.transform = value

    @property
    def data(self) -> list:
        return self.dataset.data

    @property
    def train(self) -> list:
        return self.dataset.train

    def __len__(self) -> int:
        return len(self.dataset.data)

    def __getitem__(self, index: int) -> dict:
        path, pid, camid, dsetid = self.dataset.data[index][:4]
        img = read_image_checked(path)
        if self.dataset.transform is not None:
            img = self.dataset._transform_image(self.dataset.transform, self.dataset.k_tfm, img)
        return {"img": img, "pid": pid, "camid": camid, "impath": path, "dsetid": dsetid}


def _torchreid_dataset(loader: DataLoader):
    dataset = loader.dataset
    return dataset.dataset if isinstance(dataset, CheckedImageDataset) else dataset


def loader_like(loader: DataLoader, dataset: Dataset, sampler: Optional[Sampler] = None) -> DataLoader:
    """A loader with ``loader``'s batch size, workers and pinning over ``dataset``."""
    return DataLoader(dataset, batch_size=loader.batch_size, sampler=sampler, shuffle=False,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory, drop_last=loader.drop_last)


def test_datasets(datamanager):
    """(dataset name, split, torchreid dataset) of every query and gallery loader."""
    for name, splits in datamanager.test_loader.items():
        for split, loader in splits.items():
            yield name, split, _torchreid_dataset(loader)


def skip_unreadable_images(datamanager, workers: int = 4) -> Dict[str, str]:
    """Decode every image of the run once and drop the unreadable ones from the training,
    query and gallery lists (``data.skip_corrupt_images``); returns {path: reason}."""
    train = _torchreid_dataset(datamanager.train_loader)
    lists = [train.train] + [dataset.data for _, _, dataset in test_datasets(datamanager)]
    bad = scan_images([item[0] for items in lists for item in items], workers=workers)
    if not bad:
        return bad
    print(format_unreadable(bad))
    train.train = drop_unreadable(train.train, bad)
    train.data = train.train
    for name, split, dataset in test_datasets(datamanager):
        dataset.data = drop_unreadable(dataset.data, bad)
        setattr(dataset, split, dataset.data)
        datamanager.test_dataset[name][split] = dataset.data
    return bad


def rebuild_loaders(datamanager, train_sampler: Sampler) -> None:
    """Loaders over the manager's datasets with checked reads, the training one with ``train_sampler``."""
    train = _torchreid_dataset(datamanager.train_loader)
    datamanager.train_loader = loader_like(datamanager.train_loader, CheckedImageDataset(train), train_sampler)
    for name, splits in datamanager.test_loader.items():
        for split, loader in list(splits.items()):
            splits[split] = loader_like(loader, CheckedImageDataset(_torchreid_dataset(loader)))


def identities_below(items: Sequence[tuple], num_instances: int) -> Dict[int, int]:
    """{pid: image count} of the identities with fewer than ``num_instances`` images."""
    counts = Counter(int(item[1]) for item in items)
    return {pid: n for pid, n in sorted(counts.items()) if n < num_instances}


def image_list_loader(items: Sequence[tuple], transform: Callable, batch_size: int, workers: int,
                      pin_memory: bool = False, unreadable_fix: str = "") -> DataLoader:
    """An ordered, non-dropping loader over ``items`` (``unreadable_fix``: see :class:`ImageListDataset`)."""
    return DataLoader(ImageListDataset(items, transform, unreadable_fix), batch_size=batch_size, shuffle=False,
                      num_workers=workers, pin_memory=pin_memory, drop_last=False)


def train_items(datamanager) -> list:
    """The (relabelled) training list behind a torchreid data manager's train loader."""
    return list(datamanager.train_loader.dataset.train)


__all__ = ["CheckedImageDataset", "ImageListDataset", "identities_below", "image_list_loader", "loader_like",
           "rebuild_loaders", "skip_unreadable_images", "test_datasets", "train_items"]
