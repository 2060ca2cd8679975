"""MSMT17 and CUHK03-NP in the folder layouts the DCAC authors' code reads, as torchreid datasets.

torchreid reads MSMT17 from its list files (``msmt17``) and CUHK03 from the original
``cuhk-03.mat`` (``cuhk03``), but many users hold these two datasets the way the DCAC reference
code (RikoLi/DCAC, built on CLIP-ReID) reads them: as Market-1501-style folders. Rather than make
them convert, the two classes here read those folders and register under their own names; they
count as the same domains as torchreid's readers (``protocols.SAME_DOMAIN``).

``msmt17_folder``: ``<root>/MSMT17/{bounding_box_train,bounding_box_test,query}/*.jpg``.
    Taken from the reference's ``engine/datasets/msmt17_v2.py`` (class ``MSMT17_V2``):
    ``dataset_dir = 'MSMT17'`` directly under the data root, the three Market folders, ``*.jpg``,
    pid and camera parsed with ``([-\\d]+)_c([-\\d]+)`` (file names ``PPPP_cCC_*.jpg``, e.g.
    ``0012_c14_0003.jpg``; the camera may have two digits, MSMT17 has 15), cameras checked to be
    1..15 and made 0-based, pid -1 skipped as junk, training pids relabelled. We use the authors'
    folder name, so a data root prepared for their code works unchanged. (On a case-insensitive
    file system it is the same folder as torchreid's ``msmt17/``; the two layouts can share it,
    as their sub-folders differ.) MSMT17 numbers its identities from 0, so pid 0 is a person
    here (in Market it is background).

``cuhk03_np``: ``<root>/cuhk03np/{detected,labeled}/{bounding_box_train,bounding_box_test,query}/*.png``,
    the CUHK03-NP release (Zhong et al., CVPR 2017: 767 training / 700 test identities) with file
    names such as ``0001_c1_1.png`` (camera 1 or 2). The folder name is the reference's
    (``engine/datasets/cuhk03_np.py``, class ``CUHK03_NP``: ``dataset_dir = 'cuhk03np'``, then the
    protocol folder ``detected`` or ``labeled``, the three Market folders, ``*.png``, pid and camera
    parsed with ``([-\\d]+)_c(\\d)``, cameras checked to be 1..2 and made 0-based, pid -1 skipped,
    training pids relabelled). ``<root>/cuhk03-np/`` is read too: it is what the published archive
    unpacks as (the download linked from zhunzhong07/person-re-ranking's ``CUHK03-NP/README.md``,
    ``cuhk03-np.zip``, holds ``cuhk03-np/{detected,labeled}/``; EANet's README lists
    ``cuhk03-np  # Extracted from cuhk03-np.zip``, and OpenUnReID's ``CUHK03np``
    (``dataset_dir = 'cuhk03-np'``) and EANet's ``CUHK03NpDetectedPng`` read it under that name).
    Where both folders hold the subset read, ``cuhk03np/`` (the reference's) is read and the run
    says so; a folder that is a link to the other counts once.
    The subset follows torchreid's own switch: ``ImageDataManager`` passes
    ``cuhk03_labeled=cfg.cuhk03.labeled_images`` to every dataset, so ``detected/`` is read by
    default (as in the paper) and ``labeled/`` only when it is True. Only the subset read has to
    exist: a release holding ``detected/`` alone is complete for the paper's setting.

Both readers mirror torchreid's ``Market1501.process_dir`` (0-based cameras, -1 skipped, train
pids relabelled to 0..N-1, query and gallery pids kept as written) except that they parse the
file name rather than the whole path (a parent folder such as ``run_2_c1`` cannot be mistaken for
one), read the files in sorted order and number the training pids in ascending order, so a
seeded run sees the same data in the same order on every file system. Neither downloads
anything: a missing or incomplete folder raises :class:`~dcac_config.layouts.DatasetLayoutError`
with the expected tree; their layouts are among :mod:`dcac_config.layouts`'s, for the pre-flight check.
Multi-source offsets of pids and cameras are left to torchreid, which applies them when it adds
the sources' training sets.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple, Type

from torchreid import data as reid_data

from dcac_config.layouts import (CUHK03_NP_LAYOUT, CUHK03_NP_NAMES, MARKET_SPLIT_FOLDERS, MSMT17_FOLDER_LAYOUT,
                                 MSMT17_FOLDER_NAMES, DatasetLayout, DatasetLayoutError, ImageNames,
                                 check_dataset_layout, pid_and_camera)

Item = Tuple[str, int, int]  # (image path, pid, 0-based camera), as torchreid's datasets list them


def read_market_style_dir(dir_path: str, dataset: str, names: ImageNames, relabel: bool) -> List[Item]:
    """The images ``*<names.extension>`` of one Market-style folder as torchreid's ``(path, pid, camid)``.

    File names start with ``<pid>_c<camera>``; junk pids are skipped, cameras 1..``names.num_cameras``
    become 0-based, and with ``relabel`` the pids become 0..N-1 in ascending order of the written pid.
    Raises :class:`~dcac_config.layouts.DatasetFileNameError` naming the first file whose name
    does not parse or whose camera is out of range.
    """
    items = []
    for file_name in sorted(os.listdir(dir_path)):
        if not file_name.endswith(names.extension):
            continue
        path = os.path.join(dir_path, file_name)
        found = names.problem(path)
        if found:
            raise names.error(dataset, path, *found)
        pid, camera = pid_and_camera(file_name)
        if pid == names.junk_pid:
            continue
        items.append((path, pid, camera - 1))
    if relabel:
        label_of = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in items}))}
        items = [(path, label_of[pid], camid) for path, pid, camid in items]
    return items


def _read_splits(name: str, layout: DatasetLayout, names: ImageNames, root: str, data_dir: str,
                 why: str = "") -> Tuple[List[Item], List[Item], List[Item]]:
    """Train, query and gallery of the Market-style folders in ``data_dir``, after checking that
    ``data_dir`` and each folder exist and hold images (``why`` is added to such errors)."""
    for path in (data_dir,) + tuple(os.path.join(data_dir, d) for d in MARKET_SPLIT_FOLDERS):
        if not os.path.isdir(path):
            raise DatasetLayoutError.for_path(name, path, root, layout.tree,
                                              f"Dataset {name!r} is incomplete: {path} does not exist{why}.")
    splits = {}
    for split_dir in MARKET_SPLIT_FOLDERS:
        path = os.path.join(data_dir, split_dir)
        splits[split_dir] = read_market_style_dir(path, name, names, relabel=split_dir == "bounding_box_train")
        # torchreid's Dataset indexes train[0], query[0] and gallery[0]: an empty split would
        # otherwise fail there with a bare IndexError.
        if not splits[split_dir]:
            problem = f"Dataset {name!r} has no usable *{names.extension} images in {path}{why}."
            raise DatasetLayoutError.for_path(name, path, root, layout.tree, problem)
    return splits["bounding_box_train"], splits["query"], splits["bounding_box_test"]


class MSMT17Folder(reid_data.ImageDataset):
    """MSMT17 (1,041 training identities, 15 cameras) in the DCAC reference's Market-style folder."""

    name = "msmt17_folder"
    dataset_dir = MSMT17_FOLDER_LAYOUT.folder
    dataset_url = None

    def __init__(self, root: str = "", **kwargs) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        check_dataset_layout(self.name, self.root)
        self.dataset_dir = os.path.join(self.root, MSMT17_FOLDER_LAYOUT.folder)
        train, query, gallery = _read_splits(self.name, MSMT17_FOLDER_LAYOUT, MSMT17_FOLDER_NAMES, self.root,
                                             self.dataset_dir)
        super().__init__(train, query, gallery, **kwargs)


def cuhk03_np_subset_dir(root: str, subset: str) -> Tuple[str, str]:
    """(folder of ``subset`` to read, a note or ''): under the first of the layout's folder names
    holding it; where none does, under the first that exists (or the first name), for the error."""
    names = CUHK03_NP_LAYOUT.folder_names()
    holding = [os.path.join(root, name, subset) for name in names if os.path.isdir(os.path.join(root, name, subset))]
    if not holding:
        existing = [name for name in names if os.path.isdir(os.path.join(root, name))] or list(names)
        return os.path.join(root, existing[0], subset), ""
    chosen = holding[0]
    others = [path for path in holding[1:] if not os.path.samefile(path, chosen)]
    note = (f"Dataset 'cuhk03_np': {chosen} and {', '.join(others)} both exist; reading {chosen} (the DCAC "
            "authors' folder name comes first)" if others else "")
    return chosen, note


class CUHK03NP(reid_data.ImageDataset):
    """CUHK03-NP (767 training identities, 2 cameras) from its png release; ``cuhk03_labeled``
    (torchreid's switch, ``cuhk03.labeled_images``) picks ``labeled/`` over ``detected/``."""

    name = "cuhk03_np"
    dataset_dir = CUHK03_NP_LAYOUT.folder
    dataset_url = None

    def __init__(self, root: str = "", cuhk03_labeled: bool = False, **kwargs) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        check_dataset_layout(self.name, self.root)
        self.subset = "labeled" if cuhk03_labeled else "detected"
        self.data_dir, note = cuhk03_np_subset_dir(self.root, self.subset)
        if note:
            print(note)
        self.dataset_dir = os.path.dirname(self.data_dir)
        why = f" (cuhk03.labeled_images is {bool(cuhk03_labeled)}, so the {self.subset} subset is read)"
        train, query, gallery = _read_splits(self.name, CUHK03_NP_LAYOUT, CUHK03_NP_NAMES, self.root,
                                             self.data_dir, why=why)
        super().__init__(train, query, gallery, **kwargs)


EXTRA_DATASETS: Dict[str, Type[reid_data.ImageDataset]] = {"msmt17_folder": MSMT17Folder, "cuhk03_np": CUHK03NP}

__all__ = ["CUHK03NP", "CUHK03_NP_LAYOUT", "CUHK03_NP_NAMES", "EXTRA_DATASETS", "MSMT17Folder",
           "MSMT17_FOLDER_LAYOUT", "MSMT17_FOLDER_NAMES", "read_market_style_dir"]
