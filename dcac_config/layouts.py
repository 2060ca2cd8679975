"""Pre-flight check that a dataset sits where torchreid will look for it, showing the expected tree.

torchreid's dataset classes try to DOWNLOAD a dataset whose folder is missing (which hangs or
fails on GPU nodes without internet) and otherwise stop at the first missing path with a bare
``"X" is not found`` or ``Dataset folder not found``. :func:`check_datasets` runs before them and
raises :class:`DatasetLayoutError`, which names the dataset, the first missing path, the data
root in use, the folder tree torchreid expects and the fix.

Each :class:`DatasetLayout` mirrors its torchreid class exactly: it requires what that class
checks or opens while loading, and nothing it treats as optional.

Market-1501 and DukeMTMC-reID take each image's pid and camera from its name, and torchreid's
readers do it blindly: a name without ``<pid>_c<camera>`` ends in a bare AttributeError, a camera
out of range in a bare AssertionError, and a parent folder named like ``run-1_c2`` is parsed
instead of the file name (their pattern searches the whole path), silently. The pre-flight
checks every name as torchreid will read it and raises :class:`DatasetFileNameError`, naming
the first bad file, the pattern with an example and the dataset's cameras (:class:`ImageNames`).
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from textwrap import indent
from typing import Dict, Iterable, Optional, Pattern, Tuple, Union

from .errors import UsageError, UserError

_FIX = "put the dataset there or pass --root / set data.root"
# The image folders of a Market-style dataset, in the order torchreid reads them.
MARKET_SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")


class DatasetLayoutError(UserError, FileNotFoundError):
    """A dataset folder that is missing or incomplete under the data root.

    ``dataset``, ``missing`` and ``root`` say which dataset, which path and which data root.
    The constructor takes the bare message as its only positional argument, so the error
    pickles and re-raises like any exception; build it with :meth:`for_path`.
    """

    def __init__(self, message: str, *, dataset: str = "", missing: str = "", root: str = "") -> None:
        super().__init__(message)
        self.dataset = dataset
        self.missing = missing
        self.root = root

    @classmethod
    def for_path(cls, dataset: str, missing: str, root: str, tree: str, problem: str) -> DatasetLayoutError:
        """The error for ``missing``, with ``problem`` first, then the expected tree and the fix."""
        message = (f"{problem}\n"
                   f"Data root: {root}\n"
                   f"Expected layout of dataset {dataset!r} under the data root:\n"
                   f"{indent(tree, '    ')}\n"
                   f"Fix: {_FIX}.")
        return cls(message, dataset=dataset, missing=missing, root=root)


class DatasetFileNameError(UsageError):
    """An image whose name does not give the pid and camera its dataset's reader expects."""


# pid, then camera: all of its digits (MSMT17 has 15 cameras).
MARKET_STYLE_NAME = re.compile(r"([-\d]+)_c(\d+)")
# torchreid's Market1501 / DukeMTMCreID pattern: one camera digit, searched in the whole path.
TORCHREID_NAME = re.compile(r"([-\d]+)_c(\d)")
_RENAME_FILE = "rename or remove the file"
_RENAME_FOLDER = "rename that folder, or move the dataset out of it"


def _pid_and_camera(match: Optional[re.Match]) -> Optional[Tuple[int, int]]:
    """(pid, camera) of a name match, or None when there is none or the pid is no number (``1-2``)."""
    try:
        return (int(match.group(1)), int(match.group(2))) if match else None
    except ValueError:
        return None


def pid_and_camera(file_name: str) -> Optional[Tuple[int, int]]:
    """(pid, camera) from a Market-style image name, or None if it has none."""
    return _pid_and_camera(MARKET_STYLE_NAME.search(file_name))


@dataclass(frozen=True)
class ImageNames:
    """How a Market-style reader takes pid and camera from an image's name, and what it accepts.

    ``reader_pattern`` is the reader's own expression and ``whole_path`` whether it searches the
    whole path (torchreid's) or the file name only (ours). Images with ``junk_pid`` are skipped
    without checking their camera or pid; ``max_pid``, if set, bounds the others (torchreid asserts 0..1501 on
    Market). ``example`` is a valid name, shown in errors; ``folders`` are those holding images.
    """

    example: str
    num_cameras: int
    extension: str = ".jpg"
    folders: Tuple[str, ...] = MARKET_SPLIT_FOLDERS
    reader_pattern: Pattern = MARKET_STYLE_NAME
    whole_path: bool = False
    junk_pid: Optional[int] = -1
    max_pid: Optional[int] = None

    def problem(self, path: str) -> Optional[Tuple[str, str]]:
        """(what is wrong, the fix) for the name of the image at ``path``, or None if the reader
        will read it right."""
        file_name = os.path.basename(path)
        match = MARKET_STYLE_NAME.search(file_name)
        parsed = _pid_and_camera(match)
        if parsed is None:
            return "has no <pid>_c<camera> in its name", _RENAME_FILE
        searched = path if self.whole_path else file_name
        read = self.reader_pattern.search(searched)
        if read.start() < len(searched) - len(file_name):
            folder = searched[:searched.index(os.sep, read.end())]
            return (f"lies under the folder {folder}, whose name holds {read.group(0)!r}: torchreid takes pid and "
                    "camera from the first <pid>_c<camera> in the whole path"), _RENAME_FOLDER
        pid, camera = parsed
        if pid == self.junk_pid:
            return None
        if not 1 <= camera <= self.num_cameras:
            return f"has camera c{match.group(2)}, outside c1..c{self.num_cameras}", _RENAME_FILE
        if _pid_and_camera(read) != parsed:
            return f"has camera c{match.group(2)}, of which torchreid reads one digit (c{read.group(2)})", _RENAME_FILE
        if self.max_pid is not None and not 0 <= pid <= self.max_pid:
            return f"has pid {pid}, outside 0..{self.max_pid} ({self.junk_pid} for junk)", _RENAME_FILE
        return None

    def error(self, dataset: str, path: str, problem: str, fix: str) -> DatasetFileNameError:
        """The error for the image at ``path``: ``problem``, the names expected, then ``fix``."""
        pid, camera = pid_and_camera(self.example)
        return DatasetFileNameError(
            f'Dataset {dataset!r}: image "{path}" {problem}. Its images are named <pid>_c<camera>..., e.g. '
            f"{self.example} (pid {pid}, camera {camera}), with cameras c1..c{self.num_cameras}. Fix: {fix}.")

    def check(self, dataset: str, data_dir: str) -> None:
        """Raise :class:`DatasetFileNameError` for the first image under ``data_dir`` (by folder,
        then name) whose name the reader would not read right."""
        for folder in self.folders:
            for path in sorted(glob.glob(os.path.join(data_dir, folder, "*" + self.extension))):
                found = self.problem(path)
                if found:
                    raise self.error(dataset, path, *found)

    def empty_part(self, data_dir: str) -> Optional[Tuple[str, str]]:
        """(the first folder under ``data_dir`` that holds no image the reader keeps, what it lacks),
        or None. torchreid's reader indexes the first image of each split, so an empty one would end
        in a bare IndexError (or an evaluation with nothing to rank)."""
        for folder in self.folders:
            names = (os.path.basename(p) for p in glob.glob(os.path.join(data_dir, folder, "*" + self.extension)))
            if not any((pid_and_camera(name) or (self.junk_pid,))[0] != self.junk_pid for name in names):
                junk = f" other than junk (pid {self.junk_pid})" if self.junk_pid is not None else ""
                return os.path.join(data_dir, folder), f"holds no *{self.extension} image{junk}"
        return None


@dataclass(frozen=True)
class ListLines:
    """MSMT17's list files as torchreid's reader parses them: one ``<image path> <pid>`` line per
    image, split on ONE space; the camera is the third ``_``-separated field of the path.

    torchreid fails on a bad line with a bare ValueError or IndexError (no file, no line), and a
    camera outside 1..``num_cameras`` silently becomes a wrong camera id.
    """

    files: Tuple[str, ...]
    example: str
    num_cameras: int

    def problem(self, line: str) -> Optional[str]:
        """What is wrong with one list line, or None if torchreid reads it right."""
        parts = line.rstrip("\n").split(" ")
        if len(parts) != 2:
            return "is not <image path> <pid> (one space between them)"
        path, pid = parts
        if not pid.strip().lstrip("-").isdigit():
            return f"has pid {pid!r}, not a number"
        fields = os.path.basename(path).split("_")
        if len(fields) < 3 or not fields[2].isdigit():
            return "has no camera: the third _-separated field of the image name must be its camera number"
        if not 1 <= int(fields[2]) <= self.num_cameras:
            return f"has camera {int(fields[2])}, outside 1..{self.num_cameras}"
        return None

    def empty_part(self, data_dir: str) -> Optional[Tuple[str, str]]:
        """(the first list file of training, query or gallery images without a line, what it lacks),
        or None (the validation list may be empty: it is added to training only on request)."""
        for name in self.files:
            path = os.path.join(data_dir, name)
            if "val" in name:
                continue
            with open(path, encoding="utf-8", errors="replace") as handle:
                if not any(line.strip() for line in handle):
                    return path, "lists no image"
        return None

    def check(self, dataset: str, data_dir: str) -> None:
        """Raise :class:`DatasetFileNameError` for the first bad line of the list files (in torchreid's order)."""
        for name in self.files:
            path = os.path.join(data_dir, name)
            with open(path, encoding="utf-8", errors="replace") as handle:
                for number, line in enumerate(handle, start=1):
                    found = self.problem(line)
                    if found:
                        raise DatasetFileNameError(
                            f"Dataset {dataset!r}: line {number} of {path}, {line.strip()!r}, {found}. MSMT17's "
                            f"list lines read <image path> <pid>, e.g. {self.example!r}, with cameras "
                            f"1..{self.num_cameras}. Fix: restore the list file from the MSMT17 release.")


@dataclass(frozen=True)
class DatasetLayout:
    """Where one dataset's files must be, relative to the data root.

    ``folder`` is the dataset's folder under the root (torchreid's ``dataset_dir``);
    ``other_folders`` are other names it has in published layouts, tried after ``folder``.
    ``alternatives`` are the sub-roots inside ``folder`` that torchreid accepts, in its order of
    preference: the first one that is a directory is used (``""`` is ``folder`` itself), and the
    check fails if none is. ``required`` are paths under the chosen sub-root;
    ``required_by_alternative`` adds paths for particular sub-roots, for datasets whose versions
    name their folders differently. ``tree`` is the layout shown to the user. ``generated``
    datasets are created on first use, so there is nothing to check. ``names``, if set, is how
    the reader parses image names (:class:`ImageNames`) or its list files (:class:`ListLines`),
    checked on every image or line of the chosen sub-root.
    """

    folder: str
    tree: str
    alternatives: Tuple[str, ...] = ("",)
    required: Tuple[str, ...] = ()
    required_by_alternative: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    generated: bool = False
    names: Optional[Union[ImageNames, ListLines]] = None
    other_folders: Tuple[str, ...] = ()

    def required_under(self, alternative: str) -> Tuple[str, ...]:
        """Every path that must exist under the sub-root ``alternative``."""
        extra = dict(self.required_by_alternative).get(alternative, ())
        return self.required + tuple(extra)

    def folder_names(self) -> Tuple[str, ...]:
        """The names the dataset's folder may have under the root, in order of preference."""
        return (self.folder,) + self.other_folders


_MSMT17_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")


def _synthetic(name: str) -> DatasetLayout:
    return DatasetLayout(
        folder=name, generated=True,
        tree=(f"{name}/                   generated here on first use; nothing to prepare\n"
              "    bounding_box_train/\n"
              "    bounding_box_test/\n"
              "    query/\n"
              "    SYNTHETIC.json"),
    )


# The DCAC reference code's own folders, read by dcac_plugin's MSMT17Folder and CUHK03NP.
MSMT17_FOLDER_NAMES = ImageNames(example="0012_c14_0003.jpg", num_cameras=15)
CUHK03_NP_NAMES = ImageNames(example="0001_c1_1.png", num_cameras=2, extension=".png")

MSMT17_FOLDER_LAYOUT = DatasetLayout(
    folder="MSMT17", required=MARKET_SPLIT_FOLDERS,
    tree=("MSMT17/                         as the DCAC reference code reads it\n"
          "    bounding_box_train/         training images, e.g. 0012_c14_0003.jpg (pid_cCAMERA_..., cameras 1..15)\n"
          "    bounding_box_test/          gallery images\n"
          "    query/                      query images"),
)

CUHK03_NP_LAYOUT = DatasetLayout(
    # Either subset satisfies the pre-flight check, which cannot know which one the run reads;
    # the dataset checks the subset it reads when it is built.
    folder="cuhk03np", other_folders=("cuhk03-np",), alternatives=("detected", "labeled"),
    required=MARKET_SPLIT_FOLDERS,
    tree=("cuhk03np/                       as the DCAC reference code reads it; or cuhk03-np/, as the published\n"
          "                                cuhk03-np.zip unpacks (with both, cuhk03np/ is read)\n"
          "    detected/                   read by default (cuhk03.labeled_images False, as in the paper)\n"
          "        bounding_box_train/     training images, e.g. 0001_c1_1.png (cameras c1, c2)\n"
          "        bounding_box_test/      gallery images\n"
          "        query/                  query images\n"
          "    labeled/                    read instead with cuhk03.labeled_images True; may be absent otherwise\n"
          "        bounding_box_train/\n"
          "        bounding_box_test/\n"
          "        query/"),
)


EXPECTED_LAYOUTS: Dict[str, DatasetLayout] = {
    # torchreid's Market1501 reads from Market-1501-v15.09.15/ if that directory exists, else
    # (with a deprecation warning) from market1501/ itself. images/ is read only with
    # market1501_500k=True, so it is not required.
    "market1501": DatasetLayout(
        folder="market1501", alternatives=("Market-1501-v15.09.15", ""), required=MARKET_SPLIT_FOLDERS,
        names=ImageNames(example="0002_c1s1_000451_03.jpg", num_cameras=6, reader_pattern=TORCHREID_NAME,
                         whole_path=True, max_pid=1501),
        tree=("market1501/\n"
              "    Market-1501-v15.09.15/      optional level: the folders below may also sit directly\n"
              "                                in market1501/ (used only if this one is absent)\n"
              "        bounding_box_train/     training images, e.g. 0002_c1s1_000451_03.jpg\n"
              "        bounding_box_test/      gallery images\n"
              "        query/                  query images\n"
              "        images/                 optional: extra gallery, read only with market1501_500k"),
    ),
    # Note the folder: torchreid's name is 'dukemtmcreid' but its folder is 'dukemtmc-reid'.
    "dukemtmcreid": DatasetLayout(
        folder="dukemtmc-reid", alternatives=("DukeMTMC-reID",), required=MARKET_SPLIT_FOLDERS,
        # torchreid's Duke reader has no junk pid: it checks the camera of every image.
        names=ImageNames(example="0001_c2_f0046182.jpg", num_cameras=8, reader_pattern=TORCHREID_NAME,
                         whole_path=True, junk_pid=None),
        tree=("dukemtmc-reid/\n"
              "    DukeMTMC-reID/\n"
              "        bounding_box_train/     training images, e.g. 0001_c2_f0046182.jpg\n"
              "        bounding_box_test/      gallery images\n"
              "        query/                  query images"),
    ),
    # torchreid's MSMT17 uses MSMT17_V1/ if it exists, else MSMT17_V2/; the versions name their
    # image folders differently. All four list files are opened while loading.
    "msmt17": DatasetLayout(
        folder="msmt17", alternatives=("MSMT17_V1", "MSMT17_V2"), required=_MSMT17_LISTS,
        required_by_alternative=(("MSMT17_V1", ("train", "test")),
                                 ("MSMT17_V2", ("mask_train_v2", "mask_test_v2"))),
        names=ListLines(files=_MSMT17_LISTS, example="0000/0000_000_01_0303morning_0015_0.jpg 0", num_cameras=15),
        tree=("msmt17/\n"
              "    MSMT17_V1/                  either this version ...\n"
              "        train/                  training and validation images\n"
              "        test/                   query and gallery images\n"
              "        list_train.txt\n"
              "        list_val.txt\n"
              "        list_query.txt\n"
              "        list_gallery.txt\n"
              "    MSMT17_V2/                  ... or this one (used only if MSMT17_V1/ is absent)\n"
              "        mask_train_v2/\n"
              "        mask_test_v2/\n"
              "        list_train.txt\n"
              "        list_val.txt\n"
              "        list_query.txt\n"
              "        list_gallery.txt"),
    ),
    # torchreid's CUHK03 checks the raw release and both new-protocol configs on every run, even
    # once it has extracted the images and written the split files.
    "cuhk03": DatasetLayout(
        folder="cuhk03",
        required=("cuhk03_release", os.path.join("cuhk03_release", "cuhk-03.mat"),
                  "cuhk03_new_protocol_config_detected.mat", "cuhk03_new_protocol_config_labeled.mat"),
        tree=("cuhk03/\n"
              "    cuhk03_release/\n"
              "        cuhk-03.mat\n"
              "    cuhk03_new_protocol_config_detected.mat\n"
              "    cuhk03_new_protocol_config_labeled.mat\n"
              "    (torchreid writes images_detected/, images_labeled/ and splits_*.json here on first use)"),
    ),
    # The classical multi-source DG benchmark (docs/reproducing.md, "The classical multi-source DG benchmark"):
    # CUHK02 and CUHK-SYSU train, iLIDS, PRID, GRID and VIPeR are tested on, each with torchreid's
    # reader. Those readers check little: CUHK02 globs each camera folder (a missing one silently
    # loses its identities; a missing P5 ends in a bare IndexError), CUHK-SYSU globs its folder,
    # and iLIDS, GRID and VIPeR DOWNLOAD a dataset whose folder is missing.
    "cuhk02": DatasetLayout(
        folder="cuhk02",
        required=tuple(os.path.join("Dataset", f"P{pair}", cam) for pair in range(1, 6) for cam in ("cam1", "cam2")),
        tree=("cuhk02/\n"
              "    Dataset/\n"
              "        P1/ ... P5/             the five camera pairs (P1-P4 train, P5 is the query/gallery pair)\n"
              "            cam1/               images *.png, named <pid>_<n>.png (the pid is the text before '_')\n"
              "            cam2/"),
    ),
    "cuhksysu": DatasetLayout(
        folder="cuhksysu", required=("cropped_images",),
        tree=("cuhksysu/\n"
              "    cropped_images/             the cropped persons, e.g. p11422_s16929_1.jpg (training only)"),
    ),
    "ilids": DatasetLayout(
        folder="ilids", required=(os.path.join("i-LIDS_Pedestrian", "Persons"),),
        tree=("ilids/\n"
              "    i-LIDS_Pedestrian/\n"
              "        Persons/                the 476 images of 119 persons, e.g. 0001001.jpg (pid 0001, image 001)\n"
              "    (torchreid writes splits.json here on first use: its 10 random splits)"),
    ),
    "prid": DatasetLayout(
        folder="prid2011",
        required=tuple(os.path.join("prid_2011", "single_shot", cam) for cam in ("cam_a", "cam_b")),
        tree=("prid2011/\n"
              "    prid_2011/\n"
              "        single_shot/\n"
              "            cam_a/              person_0001.png ... person_0385.png\n"
              "            cam_b/              person_0001.png ... person_0749.png\n"
              "    (torchreid writes splits_single_shot.json here on first use: its 10 random splits)"),
    ),
    "grid": DatasetLayout(
        folder="grid",
        required=tuple(os.path.join("underground_reid", part)
                       for part in ("probe", "gallery", "features_and_partitions.mat")),
        tree=("grid/\n"
              "    underground_reid/\n"
              "        probe/                  250 images *.jpeg, named <person>_<camera>_..., e.g. 0001_1_25004_107_32_130_281.jpeg\n"
              "        gallery/                1,025 images *.jpeg (person 0000: the 775 distractors)\n"
              "        features_and_partitions.mat   the 10 published partitions (trainIdxAll)\n"
              "    (torchreid writes splits.json here on first use)"),
    ),
    "viper": DatasetLayout(
        folder="viper", required=tuple(os.path.join("VIPeR", cam) for cam in ("cam_a", "cam_b")),
        tree=("viper/\n"
              "    VIPeR/\n"
              "        cam_a/                  632 images *.bmp, e.g. 000_45.bmp (paired with cam_b by sorted name)\n"
              "        cam_b/                  632 images *.bmp\n"
              "    (torchreid writes splits.json here on first use: 10 random partitions, each both ways)"),
    ),
    "msmt17_folder": MSMT17_FOLDER_LAYOUT,
    "cuhk03_np": CUHK03_NP_LAYOUT,
    "synthetic_a": _synthetic("synthetic_a"),
    "synthetic_b": _synthetic("synthetic_b"),
}


def register_layout(name: str, layout: DatasetLayout) -> None:
    """Make :func:`check_dataset_layout` check dataset ``name`` against ``layout`` (replacing any)."""
    EXPECTED_LAYOUTS[name] = layout


def _layout_error(name: str, layout: DatasetLayout, root: str, missing: str, problem: str) -> DatasetLayoutError:
    return DatasetLayoutError.for_path(name, missing, root, layout.tree, problem)


def dataset_folder(name: str, root: str) -> Optional[Tuple[DatasetLayout, str, str]]:
    """(layout, data root as torchreid resolves it, the dataset's folder) of dataset ``name``, or
    None for a name without a registered layout (datasets registered by users) and generated
    datasets. Raises :class:`DatasetLayoutError` when the data root or the dataset's folder is
    missing: a check of two paths, cheap enough to make before anything is imported."""
    layout = EXPECTED_LAYOUTS.get(name)
    if layout is None or layout.generated:
        return None
    # Resolve the root as torchreid does, so the paths named are the ones it would use.
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise _layout_error(name, layout, root, root, f"Data root {root} does not exist (needed by dataset {name!r}).")
    folders = [os.path.join(root, folder) for folder in layout.folder_names()]
    existing = [folder for folder in folders if os.path.isdir(folder)]
    if not existing:
        what = f"none of {', '.join(folders)} exists" if len(folders) > 1 else f"{folders[0]} does not exist"
        raise _layout_error(name, layout, root, folders[0], f"Dataset {name!r} is not in the data root: {what}.")
    # Of several names present, the first holding a sub-root is checked; a dataset reading one
    # sub-root of several (cuhk03_np's subsets) checks the one it reads when it is built.
    folder = next((f for f in existing if any(os.path.isdir(os.path.join(f, alt)) for alt in layout.alternatives)),
                  existing[0])
    return layout, root, folder


def check_dataset_layout(name: str, root: str) -> None:
    """Raise :class:`DatasetLayoutError` for the first path dataset ``name`` lacks under ``root``,
    :class:`DatasetFileNameError` for the first image whose name its reader would not read right.

    Names without a registered layout (datasets registered by users) and generated datasets
    pass without a check.
    """
    found = dataset_folder(name, root)
    if found is None:
        return
    layout, root, folder = found

    def fail(missing: str, problem: str) -> DatasetLayoutError:
        return _layout_error(name, layout, root, missing, problem)

    chosen = next((alt for alt in layout.alternatives if os.path.isdir(os.path.join(folder, alt))), None)
    if chosen is None:
        candidates = [os.path.join(folder, alt) for alt in layout.alternatives]
        what = f"none of {', '.join(candidates)} exists" if len(candidates) > 1 else f"{candidates[0]} does not exist"
        raise fail(candidates[0], f"Dataset {name!r} is incomplete: {what}.")
    for relative in layout.required_under(chosen):
        path = os.path.join(folder, chosen, relative)
        if not os.path.exists(path):
            raise fail(path, f"Dataset {name!r} is incomplete: {path} does not exist.")
    if layout.names is not None:
        layout.names.check(name, os.path.join(folder, chosen))
        empty = layout.names.empty_part(os.path.join(folder, chosen))
        if empty:
            path, lack = empty
            raise fail(path, f"Dataset {name!r} is incomplete: {path} {lack}. Copy the dataset's images back there.")


def _distinct(names: Union[str, Iterable[str]]) -> Iterable[str]:
    # torchreid accepts sources='market1501' as well as a list
    return dict.fromkeys([names] if isinstance(names, str) else names)


def check_datasets(names: Union[str, Iterable[str]], root: str) -> None:
    """:func:`check_dataset_layout` for each distinct name (a single name may be passed as a str)."""
    for name in _distinct(names):
        check_dataset_layout(name, root)


def check_dataset_folders(names: Union[str, Iterable[str]], root: str) -> None:
    """:func:`dataset_folder` for each distinct name: the data root and each dataset's folder
    exist (what ``dcac train`` checks before it imports any model)."""
    for name in _distinct(names):
        dataset_folder(name, root)


__all__ = ["CUHK03_NP_LAYOUT", "CUHK03_NP_NAMES", "DatasetFileNameError", "DatasetLayout", "DatasetLayoutError",
           "EXPECTED_LAYOUTS", "ImageNames", "ListLines", "MARKET_SPLIT_FOLDERS", "MARKET_STYLE_NAME",
           "MSMT17_FOLDER_LAYOUT", "MSMT17_FOLDER_NAMES", "TORCHREID_NAME", "check_dataset_folders",
           "check_dataset_layout", "check_datasets", "dataset_folder", "pid_and_camera", "register_layout"]
