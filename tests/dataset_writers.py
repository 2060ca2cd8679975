"""Writers of tiny datasets in the real on-disk layouts of the paper's four datasets.

Each writer puts a few identities with a few 16x8 images each under a data root, exactly where
and how the dataset's reader (torchreid's, or ours in ``dcac_plugin.data.datasets``) expects
them, and returns what that reader must produce: every image of each split with its pid and
0-based camera. Training pids are returned as written, before torchreid relabels them, so a test
can check both that query and gallery pids are kept and that training pids become 0..N-1.
Training cameras are contiguous (1..C) in every writer, as in the real datasets: torchreid
offsets a second source's cameras by the number of distinct training cameras of the first.

The classical multi-source DG benchmark's datasets (CUHK02, CUHK-SYSU; iLIDS, PRID, GRID, VIPeR)
are written in the layouts torchreid's readers of those names open (the same in 0.2.5 and upstream
1.4.0), with each dataset's real identity and image counts where the reader asserts them (iLIDS,
GRID) or lists files by number (PRID). Their writers return what the reader must find: the random
splits themselves are drawn by torchreid on first use (GRID's come from the partitions written into
its ``features_and_partitions.mat``).

The real-dataset details reproduced here come from torchreid 0.2.5's readers: Market1501 and
DukeMTMC-reID parse ``<pid>_c<camera>`` from ``*.jpg`` names (Market skips pid -1 and keeps pid 0,
its distractors, in the gallery); MSMT17 reads ``<image path> <pid>`` lines whose paths are
relative to ``train/`` or ``test/`` and takes the camera from the third ``_``-separated field;
CUHK03 extracts its images from the MATLAB v7.3 (HDF5) ``cuhk-03.mat`` and splits them with the
new-protocol ``.mat`` configs.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Sequence, Set, Tuple, Union

import numpy as np
from PIL import Image
from scipy.io import savemat

Item = Tuple[str, int, int]  # (absolute image path, pid as written, 0-based camera)
PathLike = Union[str, Path]
IMAGE_SIZE = (8, 16)  # width, height: tiny, so that writing and reading stay fast


@dataclass
class Expected:
    """What the reader must load from a written dataset, split by split."""

    train: List[Item] = field(default_factory=list)
    query: List[Item] = field(default_factory=list)
    gallery: List[Item] = field(default_factory=list)
    # Images on disk that the reader must leave out of every split (junk, validation).
    excluded: List[str] = field(default_factory=list)
    # MSMT17's list_val.txt images (training identities): in training only with msmt17.train_with_val.
    validation: List[Item] = field(default_factory=list)

    @property
    def train_ids(self) -> int:
        return len({pid for _, pid, _ in self.train})

    @property
    def train_cameras(self) -> int:
        return len({camid for _, _, camid in self.train})

    @property
    def train_paths(self) -> Set[str]:
        return {path for path, _, _ in self.train}


def _image(pid: int, camera: int, index: int) -> Image.Image:
    """A tiny picture, different per pid, camera and image (content does not matter to a reader)."""
    rng = np.random.default_rng([abs(pid), int(pid < 0), camera, index])
    return Image.fromarray(rng.integers(0, 256, size=(IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8))


def _save(path: Path, pid: int, camera: int, index: int) -> str:
    """Write the image and return its absolute path, which is what the readers list."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _image(pid, camera, index).save(path)
    return os.path.abspath(path)


def _market_style(base: Path, name_of: Callable[[int, int, int], str], splits: Dict[str, Sequence[Tuple[int, int]]],
                  junk: Iterable[Tuple[str, int, int]] = ()) -> Expected:
    """Write Market-style folders under ``base``: ``splits`` maps a folder to its (pid, camera)
    images, ``name_of(pid, camera, index)`` names a file, ``junk`` adds (folder, pid, camera)
    images that the reader must skip."""
    expected = Expected()
    target = {"bounding_box_train": expected.train, "query": expected.query, "bounding_box_test": expected.gallery}
    index = 0
    for folder, images in splits.items():
        for pid, camera in images:
            index += 1
            target[folder].append((_save(base / folder / name_of(pid, camera, index), pid, camera, index),
                                   pid, camera - 1))
    for folder, pid, camera in junk:
        index += 1
        expected.excluded.append(_save(base / folder / name_of(pid, camera, index), pid, camera, index))
    return expected


def _cycle_cameras(pids: Sequence[int], per_id: int, num_cameras: int) -> List[Tuple[int, int]]:
    """``per_id`` images of each pid, cameras cycling through 1..num_cameras across all of them."""
    images = [pid for pid in pids for _ in range(per_id)]
    return [(pid, i % num_cameras + 1) for i, pid in enumerate(images)]


# --------------------------------------------------------------------------- torchreid's layouts


def write_market1501(root: PathLike) -> Expected:
    """``market1501/Market-1501-v15.09.15/`` with Market names; 4 train ids on cameras 1..6, 2 test
    ids, a distractor (pid 0, kept in the gallery) and a junk image (pid -1, skipped)."""
    base = Path(root) / "market1501" / "Market-1501-v15.09.15"
    return _market_style(
        base, lambda pid, camera, i: f"{pid:04d}_c{camera}s1_{i:06d}_01.jpg" if pid >= 0
        else f"-1_c{camera}s1_{i:06d}_01.jpg",
        {"bounding_box_train": _cycle_cameras([2, 7, 10, 11], 2, 6),
         "query": [(3, 1), (12, 2)],
         "bounding_box_test": [(3, 4), (3, 5), (12, 6), (0, 3)]},
        junk=[("bounding_box_test", -1, 2)])


def write_dukemtmcreid(root: PathLike) -> Expected:
    """``dukemtmc-reid/DukeMTMC-reID/`` with Duke names; 3 train ids on cameras 1..8, 2 test ids."""
    base = Path(root) / "dukemtmc-reid" / "DukeMTMC-reID"
    return _market_style(
        base, lambda pid, camera, i: f"{pid:04d}_c{camera}_f{i:07d}.jpg",
        {"bounding_box_train": _cycle_cameras([1, 5, 8], 3, 8),
         "query": [(4, 7), (9, 8)],
         "bounding_box_test": [(4, 2), (9, 1), (9, 3)]})


def write_msmt17_lists(root: PathLike, version: str = "V1") -> Expected:
    """``msmt17/MSMT17_<version>/`` with torchreid's list files.

    Images sit in one folder per pid under ``train/`` and ``test/`` (``mask_train_v2/`` and
    ``mask_test_v2/`` for V2), named ``<pid>_<index>_<camera:02d>_<date>_<frame>_0.jpg`` as in
    the release; ``list_*.txt`` lines are ``<pid>/<file name> <pid>``. Train labels are 0..N-1
    and test labels restart at 0, as in the release. 3 train ids on cameras 1..15; three more
    images of two of them are listed in ``list_val.txt`` only (``validation``), which torchreid
    does not train on unless asked to (``msmt17.train_with_val``).
    """
    folders = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}[version]
    base = Path(root) / "msmt17" / f"MSMT17_{version}"
    expected = Expected()
    counter = itertools.count()  # one image index over all lists keeps every file name unique

    def write(folder: str, list_file: str, images: Sequence[Tuple[int, int]], split: List[Item]) -> None:
        lines = []
        for pid, camera in images:
            index = next(counter)
            relative = f"{pid:04d}/{pid:04d}_{index:03d}_{camera:02d}_0303morning_{index:04d}_0.jpg"
            path = _save(base / folder / relative, pid, camera, index)
            lines.append(f"{relative} {pid}\n")
            split.append((path, pid, camera - 1))
        (base / list_file).write_text("".join(lines))

    write(folders[0], "list_train.txt", _cycle_cameras([0, 1, 2], 5, 15), expected.train)
    write(folders[0], "list_val.txt", [(1, 3), (1, 12), (2, 6)], expected.validation)
    write(folders[1], "list_query.txt", [(0, 2), (1, 14)], expected.query)
    write(folders[1], "list_gallery.txt", [(0, 9), (0, 15), (1, 4)], expected.gallery)
    expected.excluded.extend(path for path, _, _ in expected.validation)
    return expected


# CUHK03: 2 camera pairs of 3 persons. The new protocol's person labels number them 1..6 in
# file order; persons 2 and 5 are the test identities. Of the 10 image cells of a person
# (5 per view), the detected release fills 2 per view and the labeled one 3, so the subsets'
# counts differ. Query: the first image of each view of a test person; gallery: the rest.
_CUHK03_PAIRS, _CUHK03_PERSONS = 2, 3
_CUHK03_TEST_LABELS = (2, 5)
_CUHK03_IMAGES_PER_VIEW = {"detected": 2, "labeled": 3}


def _cuhk03_image_name(pair: int, person: int, view: int, cell: int) -> str:
    """torchreid's name for an extracted image (all 1-based; cells 1..5 are view 1, 6..10 view 2)."""
    return f"{pair:01d}_{person:03d}_{view:01d}_{cell:02d}.png"


def write_cuhk03_mat(root: PathLike) -> Dict[str, Expected]:
    """``cuhk03/`` as torchreid's CUHK03 reads it for the new protocol, per subset.

    ``cuhk03_release/cuhk-03.mat`` is written as MATLAB v7.3 does (HDF5 with object references,
    each array stored transposed): ``detected`` and ``labeled`` are 1 x pairs cells, each pair a
    persons x 10 cell of images (3 x width x height uint8 on disk, empty cells as MATLAB's empty
    marker), ``testsets`` a 1 x 1 cell of (pair, person) rows for the classic split torchreid also
    builds. ``cuhk03_new_protocol_config_{detected,labeled}.mat`` (MATLAB v5, read with
    ``scipy.io.loadmat``) hold ``filelist`` (names of all images), ``labels`` (person label per
    image), ``camId`` (view per image) and 1-based ``train_idx`` / ``query_idx`` / ``gallery_idx``
    into them. The expected paths are those of the images torchreid extracts to
    ``images_{detected,labeled}/``.
    """
    import h5py  # only this layout needs it, as only torchreid's CUHK03 reader does

    dataset_dir = Path(root) / "cuhk03"
    (dataset_dir / "cuhk03_release").mkdir(parents=True)
    expected: Dict[str, Expected] = {}
    with h5py.File(dataset_dir / "cuhk03_release" / "cuhk-03.mat", "w") as mat:
        refs = mat.create_group("#refs#")

        def stored(name: str, array: np.ndarray) -> h5py.Reference:
            return refs.create_dataset(name, data=array).ref

        empty = np.zeros(2, dtype=np.uint64)  # how MATLAB v7.3 stores an empty cell (ndim 1: skipped)
        for subset, per_view in _CUHK03_IMAGES_PER_VIEW.items():
            names, labels, cameras, pair_refs = [], [], [], []
            label = 0
            for pair in range(1, _CUHK03_PAIRS + 1):
                cells = np.empty((10, _CUHK03_PERSONS), dtype=h5py.ref_dtype)  # persons x 10, transposed
                for person in range(1, _CUHK03_PERSONS + 1):
                    label += 1
                    for cell in range(1, 11):
                        view = 1 if cell <= 5 else 2
                        filled = (cell - 1) % 5 < per_view
                        key = f"{subset}_{pair}_{person}_{cell}"
                        if not filled:
                            cells[cell - 1, person - 1] = stored(key, empty)
                            continue
                        pixels = np.asarray(_image(label, view, cell))  # height x width x 3
                        cells[cell - 1, person - 1] = stored(key, pixels.T)  # stored transposed
                        names.append(_cuhk03_image_name(pair, person, view, cell))
                        labels.append(label)
                        cameras.append(view)
                pair_refs.append(stored(f"{subset}_pair{pair}", cells))
            mat.create_dataset(subset, data=np.array([pair_refs], dtype=h5py.ref_dtype))
            expected[subset] = _cuhk03_new_protocol(dataset_dir, subset, names, labels, cameras)
        # Classic split (torchreid builds it on every first run): rows of (pair, person), stored transposed.
        mat.create_dataset("testsets", data=np.array([[stored("testset1", np.array([[1.0, 2.0], [2.0, 2.0]]).T)]],
                                                     dtype=h5py.ref_dtype))
    return expected


def _cuhk03_new_protocol(dataset_dir: Path, subset: str, names: List[str], labels: List[int],
                         cameras: List[int]) -> Expected:
    """Write ``cuhk03_new_protocol_config_<subset>.mat`` and return the split it defines."""
    first_of_view = set()
    train_idx, query_idx, gallery_idx = [], [], []
    for index, (label, camera) in enumerate(zip(labels, cameras), start=1):  # MATLAB indices are 1-based
        if label not in _CUHK03_TEST_LABELS:
            train_idx.append(index)
        elif (label, camera) not in first_of_view:
            first_of_view.add((label, camera))
            query_idx.append(index)
        else:
            gallery_idx.append(index)
    filelist = np.empty((len(names), 1), dtype=object)  # a MATLAB cell column of strings
    filelist[:, 0] = names

    def column(values: List[int]) -> np.ndarray:
        return np.array(values, dtype=np.int32).reshape(-1, 1)

    savemat(str(dataset_dir / f"cuhk03_new_protocol_config_{subset}.mat"),
            {"filelist": filelist, "labels": column(labels), "camId": column(cameras),
             "train_idx": column(train_idx), "query_idx": column(query_idx), "gallery_idx": column(gallery_idx)})
    images_dir = dataset_dir.absolute() / f"images_{subset}"

    def split(indices: List[int]) -> List[Item]:
        return [(str(images_dir / names[i - 1]), labels[i - 1], cameras[i - 1] - 1) for i in indices]

    return Expected(train=split(train_idx), query=split(query_idx), gallery=split(gallery_idx))


# --------------------------------------------------------------------------- the authors' layouts


def write_msmt17_folder(root: PathLike) -> Expected:
    """``MSMT17/`` in Market style, as ``msmt17_folder`` reads it: names ``<pid>_c<camera>_<n>.jpg``
    with 1- and 2-digit cameras; 4 train ids (pid 0 among them: a person in MSMT17) on cameras
    1..15, 2 test ids, and a junk image (pid -1) in the gallery."""
    return _market_style(
        Path(root) / "MSMT17", lambda pid, camera, i: f"{pid:04d}_c{camera}_{i:04d}.jpg" if pid >= 0
        else f"-1_c{camera}_{i:04d}.jpg",
        {"bounding_box_train": _cycle_cameras([0, 3, 4, 9], 4, 15),
         "query": [(1041, 12), (1050, 3)],
         "bounding_box_test": [(1041, 1), (1041, 15), (1050, 7)]},
        junk=[("bounding_box_test", -1, 10)])


def write_cuhk03_np(root: PathLike, subsets: Sequence[str] = ("detected", "labeled"),
                    folder: str = "cuhk03-np") -> Dict[str, Expected]:
    """``<folder>/<subset>/`` png folders, as ``cuhk03_np`` reads them, for each of ``subsets``:
    ``cuhk03-np/`` as the published ``cuhk03-np.zip`` unpacks, or ``cuhk03np/`` as the DCAC
    authors' reader (``engine/datasets/cuhk03_np.py``) reads ``<root>/cuhk03np/<protocol>/``.

    Names ``<pid>_c<camera>_<n>.png``, cameras 1 and 2. Both subsets have the same identities
    (3 train, 2 test); ``labeled`` has more images, so a test can tell which one was read.
    """
    expected = {}
    for subset in subsets:
        per_id = {"detected": 2, "labeled": 3}[subset]
        expected[subset] = _market_style(
            Path(root) / folder / subset, lambda pid, camera, i: f"{pid:04d}_c{camera}_{i}.png",
            {"bounding_box_train": _cycle_cameras([1, 4, 6], per_id, 2),
             "query": [(2, 1), (5, 2)],
             "bounding_box_test": [(2, 2), (5, 1)] + [(5, 2)] * (per_id - 2)})
    return expected


# --------------------------------------------------------------------------- the classical DG benchmark


def write_cuhk02(root: PathLike, persons_per_pair: int = 3) -> Expected:
    """``cuhk02/Dataset/P1..P5/{cam1,cam2}/<pid>_<n>.png`` (the pid is the text before ``_``; each
    person has two images per camera, as in the release). Pids restart in every pair, as torchreid
    reads them: P1-P4 train (returned as ``1000 * pair + pid``, one identity per pair and pid),
    P5 query (cam1) and gallery (cam2) with its pids as written. Cameras are numbered folder by
    folder over the pairs, as torchreid does: P1 cam1 is 0, ..., P5 cam2 is 9."""
    base = Path(root) / "cuhk02" / "Dataset"
    expected = Expected()
    camera = -1
    for pair in range(1, 6):
        for cam in ("cam1", "cam2"):
            camera += 1
            for pid in range(1, persons_per_pair + 1):
                for n in (1, 2):
                    path = _save(base / f"P{pair}" / cam / f"{pid:03d}_{n}.png", 1000 * pair + pid, camera, n)
                    if pair < 5:
                        expected.train.append((path, 1000 * pair + pid, camera))
                    else:
                        (expected.query if cam == "cam1" else expected.gallery).append((path, pid, camera))
    return expected


def write_cuhksysu(root: PathLike, persons: int = 4, images_per_person: int = 3) -> Expected:
    """``cuhksysu/cropped_images/p<pid>_s<scene>_<n>.jpg`` as torchreid's reader lists it: training
    only (every image camera 0; query and gallery are copies of one training image)."""
    base = Path(root) / "cuhksysu" / "cropped_images"
    expected = Expected()
    for person in range(persons):
        pid = 11422 + 7 * person
        for n in range(1, images_per_person + 1):
            path = _save(base / f"p{pid}_s{16929 + 3 * person + n}_{n}.jpg", pid, 0, n)
            expected.train.append((path, pid, 0))
    return expected


ILIDS_PERSONS, ILIDS_IMAGES = 119, 476  # torchreid asserts both counts


def write_ilids(root: PathLike) -> Dict[int, List[str]]:
    """``ilids/i-LIDS_Pedestrian/Persons/<pid:4><n:3>.jpg``: 119 persons, 476 images (4 each). torchreid
    reads the pid from the first four digits and the camera from the next three (``n - 1``). Returns
    {pid: image paths}."""
    base = Path(root) / "ilids" / "i-LIDS_Pedestrian" / "Persons"
    images: Dict[int, List[str]] = {}
    for pid in range(1, ILIDS_PERSONS + 1):
        images[pid] = [_save(base / f"{pid:04d}{n:03d}.jpg", pid, n, n) for n in range(1, 5)]
    assert sum(len(paths) for paths in images.values()) == ILIDS_IMAGES
    return images


def write_prid(root: PathLike) -> Dict[str, Dict[int, str]]:
    """``prid2011/prid_2011/single_shot/cam_a/person_<n:4>.png`` (385 persons) and ``cam_b/`` (749):
    persons 1..200 are in both views, cam_b's 201..749 are the gallery's distractors. torchreid
    names these files by number, so all of them are written. Returns {"cam_a"|"cam_b": {n: path}}."""
    base = Path(root) / "prid2011" / "prid_2011" / "single_shot"
    return {cam: {n: _save(base / cam / f"person_{n:04d}.png", n, index, n) for n in range(1, count + 1)}
            for index, (cam, count) in enumerate((("cam_a", 385), ("cam_b", 749)))}


@dataclass
class GridRelease:
    """What :func:`write_grid` wrote: the probe and matching gallery image of each person, the
    distractors (person 0000), and the 10 published partitions' training persons."""

    probe: Dict[int, str]
    gallery: Dict[int, str]
    distractors: List[str]
    train_persons: List[List[int]]


GRID_PERSONS, GRID_DISTRACTORS = 250, 775


def _grid_name(person: int, camera: int, index: int) -> str:
    """A GRID file name: person (0000 for a distractor), camera 1..8, then frame and box fields."""
    return f"{person:04d}_{camera}_{25004 + index:05d}_{107 + index % 50}_{32 + index % 7}_130_281.jpeg"


def write_grid(root: PathLike) -> GridRelease:
    """``grid/underground_reid/`` as released: ``probe/`` (one image of each of the 250 persons),
    ``gallery/`` (each person's match, on another camera, and 775 distractors of person 0000) and
    ``features_and_partitions.mat``, whose ``trainIdxAll`` (like ``testIdxAll``) is a 1 x 10 cell of
    structs with fields ``probeImIdx``, ``galleryImIdx`` and ``personIdx`` (the partition's 125
    training persons: torchreid reads this third field by position)."""
    base = Path(root) / "grid" / "underground_reid"
    probe, gallery, distractors = {}, {}, []
    for person in range(1, GRID_PERSONS + 1):
        probe_camera, gallery_camera = 1 + person % 8, 1 + (person + 3) % 8
        probe[person] = _save(base / "probe" / _grid_name(person, probe_camera, person), person, probe_camera, 0)
        gallery[person] = _save(base / "gallery" / _grid_name(person, gallery_camera, person), person,
                                gallery_camera, 1)
    for index in range(GRID_DISTRACTORS):
        distractors.append(_save(base / "gallery" / _grid_name(0, 1 + index % 8, 1000 + index), 0, index, 2))
    rng = np.random.default_rng(2012)
    train_persons = [sorted(rng.choice(np.arange(1, GRID_PERSONS + 1), size=125, replace=False).tolist())
                     for _ in range(10)]

    def partitions(persons_of: Callable[[List[int]], List[int]]) -> np.ndarray:
        cells = np.empty((1, 10), dtype=object)
        for k, train in enumerate(train_persons):
            persons = np.array(persons_of(train), dtype=np.float64).reshape(1, -1)
            # MATLAB indices into the release's image list: gallery matches 2p-1, probes 2p.
            cells[0, k] = {"probeImIdx": 2 * persons, "galleryImIdx": 2 * persons - 1, "personIdx": persons}
        return cells

    savemat(str(base / "features_and_partitions.mat"),
            {"trainIdxAll": partitions(lambda train: train),
             "testIdxAll": partitions(lambda train: [p for p in range(1, GRID_PERSONS + 1) if p not in train])})
    return GridRelease(probe, gallery, distractors, train_persons)


VIPER_PERSONS = 632


def write_viper(root: PathLike, persons: int = VIPER_PERSONS) -> List[Tuple[str, str]]:
    """``viper/VIPeR/cam_a/`` and ``cam_b/``: 632 persons (or ``persons``: torchreid's reader takes
    any even count), one ``<index:3>_<angle>.bmp`` per camera (torchreid pairs the two folders by
    sorted name). Returns (cam_a path, cam_b path) per person."""
    base = Path(root) / "viper" / "VIPeR"
    pairs = []
    for person in range(persons):
        index = person + person // 3  # the release's indices have gaps
        pairs.append(tuple(_save(base / cam / f"{index:03d}_{angle}.bmp", person, camera, 0)
                           for camera, (cam, angle) in enumerate((("cam_a", 45 * (person % 4)),
                                                                  ("cam_b", 90 + 45 * (person % 3))))))
    return pairs
