"""Input checks: unreadable images fail fast (torchreid's reader loops forever on them) and dataset
folders are checked against the layout torchreid needs, before it tries to download them."""
from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchreid import data as reid_data

from dcac_config import layouts
from dcac_config.layouts import (EXPECTED_LAYOUTS, DatasetLayout, DatasetLayoutError, check_dataset_layout,
                                 check_datasets, register_layout)
from dcac_plugin.data.images import (ImageReadError, check_image, drop_unreadable, format_unreadable,
                                     read_image_checked, scan_images)

IMAGE_FIX = "remove or replace the file, or set data.skip_corrupt_images True to skip unreadable images"
LAYOUT_FIX = "Fix: put the dataset there or pass --root / set data.root."


# --------------------------------------------------------------------------- images


def _picture(mode: str = "RGB") -> Image.Image:
    # Noise, so the JPEG has enough entropy-coded data for cutting it to truncate the scan.
    pixels = np.random.default_rng(0).integers(0, 256, size=(128, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.fixture
def images(tmp_path: Path) -> dict:
    """Paths of good and bad image files, by kind."""
    paths = {kind: str(tmp_path / name) for kind, name in [
        ("jpeg", "good.jpg"), ("png", "good.png"), ("truncated", "truncated.jpg"), ("broken_png", "broken.png"),
        ("empty", "empty.jpg"), ("random", "random.jpg"), ("missing", "missing.jpg")]}
    _picture().save(paths["jpeg"], quality=90)
    _picture("L").save(paths["png"])  # greyscale: read_image_checked must still return RGB
    jpeg = Path(paths["jpeg"]).read_bytes()
    Path(paths["truncated"]).write_bytes(jpeg[:len(jpeg) // 2])
    # A solid PNG with its second half zeroed: the image data stops early and the next chunk
    # header is invalid, which PIL reports as SyntaxError, not OSError.
    solid = io.BytesIO()
    Image.new("RGB", (64, 128), (200, 30, 30)).save(solid, "PNG")
    png = solid.getvalue()
    Path(paths["broken_png"]).write_bytes(png[:len(png) // 2] + bytes(len(png) - len(png) // 2))
    Path(paths["empty"]).write_bytes(b"")
    Path(paths["random"]).write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return paths


BAD_KINDS = [("truncated", "truncated or corrupt: "), ("broken_png", "truncated or corrupt: "),
             ("empty", "empty file (0 bytes)"), ("random", "truncated or corrupt: "),
             ("missing", "missing (no such file)")]


def _open_fds_to(directory: str) -> list:
    fd_dir = "/proc/self/fd"
    targets = []
    for fd in os.listdir(fd_dir):
        try:
            targets.append(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:  # the fd listing itself, closed meanwhile
            pass
    return [target for target in targets if target.startswith(directory)]


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_good_images_read_as_rgb_with_their_size(images, kind):
    image = read_image_checked(images[kind])
    assert image.mode == "RGB" and image.size == (64, 128)
    assert check_image(images[kind]) is None


@pytest.mark.parametrize("kind,reason", BAD_KINDS)
def test_unreadable_image_raises_once_with_problem_and_fix(images, kind, reason):
    outcome = {}

    def read() -> None:
        try:
            read_image_checked(images[kind])
        except ImageReadError as error:
            outcome["error"] = error

    # torchreid's read_image retries such files forever; a daemon thread lets a regression show
    # up as a failure instead of hanging the test session.
    worker = threading.Thread(target=read, daemon=True)
    start = time.monotonic()
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), f"read_image_checked did not return on a {kind} file"
    assert time.monotonic() - start < 5
    error = outcome["error"]
    assert isinstance(error, RuntimeError)
    assert error.path == images[kind] and error.reason.startswith(reason)
    message = str(error)
    assert f'Cannot read image "{images[kind]}": {reason}' in message
    assert IMAGE_FIX in message
    assert check_image(images[kind]) == error.reason


def test_reasons_carry_pils_error(images):
    assert check_image(images["truncated"]).startswith("truncated or corrupt: image file is truncated")
    # The broken PNG exercises a decoder error that is not an OSError (torchreid would crash on it).
    with pytest.raises(SyntaxError) as raw:
        with Image.open(images["broken_png"]) as image:
            image.load()
    assert check_image(images["broken_png"]) == f"truncated or corrupt: {raw.value}"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to list open files")
def test_reading_leaves_no_file_open(images, tmp_path):
    decoded = [read_image_checked(images[kind]) for kind in ("jpeg", "png")]
    # Keep the errors, and so their tracebacks' frames, alive: a file closed only when its
    # image object is garbage collected would still be open here.
    errors = []
    for kind in ("truncated", "broken_png", "empty", "random"):
        try:
            read_image_checked(images[kind])
        except ImageReadError as error:
            errors.append(error)
    assert len(decoded) == 2 and len(errors) == 4
    assert _open_fds_to(str(tmp_path)) == []


class _Paths(Dataset):
    def __init__(self, paths: list) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return np.asarray(read_image_checked(self.paths[index]))


def _first_batch_error(loader: DataLoader) -> tuple:
    batches = iter(loader)
    try:
        next(batches)
    except Exception as error:
        # The traceback's frames hold the iterator in a reference cycle; breaking it frees the
        # iterator (shutting its worker down) on return. Left to the garbage collector, torch's
        # worker shutdown stalls for 5 s, in whichever later test the collection happens.
        error.__traceback__ = None
        return type(error), str(error)
    return None, ""


def test_error_keeps_its_type_through_a_dataloader_worker(images):
    # torch re-raises a worker's exception as type(message); a two-argument constructor would
    # turn it into a plain RuntimeError in the main process.
    error_type, message = _first_batch_error(DataLoader(_Paths([images["empty"]]), batch_size=1, num_workers=1))
    assert error_type is ImageReadError and "empty file (0 bytes)" in message


def test_scan_images_finds_exactly_the_bad_ones_in_input_order(images):
    paths = [images["jpeg"], images["random"], images["png"], images["truncated"], images["random"],
             images["missing"], images["jpeg"], images["empty"]]
    bad = scan_images(paths, workers=2)
    assert list(bad) == [images["random"], images["truncated"], images["missing"], images["empty"]]
    assert bad[images["empty"]] == "empty file (0 bytes)"
    assert bad[images["missing"]] == "missing (no such file)"
    assert scan_images([images["jpeg"], images["png"]], workers=2) == {}
    assert scan_images([]) == {}


def test_drop_unreadable_keeps_order_and_items():
    items = [(f"/d/{i}.jpg", i % 3, i % 2, 0) for i in range(6)]
    bad = {"/d/1.jpg": "empty file (0 bytes)", "/d/4.jpg": "missing (no such file)", "/elsewhere.jpg": "x"}
    kept = drop_unreadable(items, bad)
    assert kept == [items[0], items[2], items[3], items[5]]
    assert kept is not items and len(items) == 6


def test_format_unreadable_lists_the_first_few():
    bad = {f"/d/{i}.jpg": f"reason {i}" for i in range(7)}
    message = format_unreadable(bad, limit=5)
    assert message.startswith("Skipping 7 unreadable image(s) (data.skip_corrupt_images True): "
                              "/d/0.jpg (reason 0), /d/1.jpg (reason 1), ")
    assert message.endswith("/d/4.jpg (reason 4), ... and 2 more")
    assert "/d/5.jpg" not in message and "\n" not in message
    two = format_unreadable({"/a.jpg": "empty file (0 bytes)", "/b.jpg": "missing (no such file)"})
    assert two == ("Skipping 2 unreadable image(s) (data.skip_corrupt_images True): "
                   "/a.jpg (empty file (0 bytes)), /b.jpg (missing (no such file))")


# --------------------------------------------------------------------------- layouts

MARKET_DIRS = ["bounding_box_train", "query", "bounding_box_test"]
MSMT17_LISTS = ["list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt"]
CUHK03_FILES = ["cuhk03_release/cuhk-03.mat", "cuhk03_new_protocol_config_detected.mat",
                "cuhk03_new_protocol_config_labeled.mat"]


def _make(root: Path, *relative: str) -> Path:
    """Create ``relative`` paths under ``root``: files if they have a suffix, else directories."""
    for path in relative:
        target = root / path
        if target.suffix:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        else:
            target.mkdir(parents=True, exist_ok=True)
    return root


# One image per folder under its published name (the check refuses a split without an image).
PUBLISHED_IMAGE = {"bounding_box_train": "0002_c1s1_000451_03.jpg", "bounding_box_test": "0003_c1s6_015971_00.jpg",
                   "query": "0003_c1s6_015971_01.jpg"}
MSMT17_LINE = "0000/0000_000_01_0303morning_0015_0.jpg 0\n"


def _make_filled(root: Path, *relative: str) -> Path:
    """:func:`_make`, with one published image name in each Market/Duke split folder and one line
    in each MSMT17 list file, as in the published datasets."""
    _make(root, *relative)
    for path in relative:
        target = root / path
        if target.name in PUBLISHED_IMAGE:
            (target / PUBLISHED_IMAGE[target.name]).touch()
        elif target.name.startswith("list_"):
            target.write_text(MSMT17_LINE)
    return root


def _raises(name: str, root) -> DatasetLayoutError:
    with pytest.raises(DatasetLayoutError) as caught:
        check_dataset_layout(name, str(root))
    assert isinstance(caught.value, FileNotFoundError)
    return caught.value


def _assert_message(error: DatasetLayoutError, dataset: str, missing: str, root: str, tree_text: str) -> None:
    message = str(error)
    assert (error.dataset, error.missing, error.root) == (dataset, missing, root)
    assert f"{missing} does not exist" in message
    assert f"Data root: {root}\n" in message
    assert f"Expected layout of dataset {dataset!r} under the data root:\n" in message
    assert tree_text in message
    assert message.endswith(LAYOUT_FIX)


@pytest.mark.parametrize("sub_root", ["Market-1501-v15.09.15", ""])
def test_complete_market_layout_passes(tmp_path, sub_root):
    _make_filled(tmp_path, *[os.path.join("market1501", sub_root, d) for d in MARKET_DIRS])
    check_dataset_layout("market1501", str(tmp_path))
    check_datasets(["market1501"], str(tmp_path))


@pytest.mark.parametrize("sub_root", ["Market-1501-v15.09.15", ""])
def test_market_without_query_names_it_and_shows_the_tree(tmp_path, sub_root):
    _make(tmp_path, *[os.path.join("market1501", sub_root, d) for d in ["bounding_box_train", "bounding_box_test"]])
    error = _raises("market1501", tmp_path)
    missing = os.path.join(str(tmp_path), "market1501", sub_root, "query")
    _assert_message(error, "market1501", missing, str(tmp_path), "bounding_box_test/")
    assert str(error).startswith(f"Dataset 'market1501' is incomplete: {missing} does not exist.")


def test_market_uses_the_versioned_folder_when_it_exists(tmp_path):
    # torchreid reads Market-1501-v15.09.15/ whenever it is a directory, even if the folders also
    # sit directly in market1501/, so an incomplete versioned folder must fail.
    _make(tmp_path, *[os.path.join("market1501", d) for d in MARKET_DIRS], "market1501/Market-1501-v15.09.15/query")
    error = _raises("market1501", tmp_path)
    assert error.missing == os.path.join(str(tmp_path), "market1501", "Market-1501-v15.09.15", "bounding_box_train")


def test_missing_root_is_named(tmp_path):
    root = str(tmp_path / "no-such-root")
    error = _raises("market1501", root)
    _assert_message(error, "market1501", root, root, "bounding_box_train/")
    assert str(error).startswith(f"Data root {root} does not exist (needed by dataset 'market1501').")


def test_root_is_resolved_like_torchreid(tmp_path, monkeypatch):
    _make_filled(tmp_path, *[os.path.join("market1501", d) for d in MARKET_DIRS])
    monkeypatch.chdir(tmp_path)
    check_dataset_layout("market1501", ".")
    shutil.rmtree(tmp_path / "market1501" / "query")
    assert _raises("market1501", ".").missing == os.path.join(str(tmp_path), "market1501", "query")


def test_missing_dataset_folder_uses_torchreids_folder_name(tmp_path):
    error = _raises("dukemtmcreid", tmp_path)
    missing = os.path.join(str(tmp_path), "dukemtmc-reid")
    _assert_message(error, "dukemtmcreid", missing, str(tmp_path), "    DukeMTMC-reID/\n")
    assert str(error).startswith(f"Dataset 'dukemtmcreid' is not in the data root: {missing} does not exist.")


def test_duke_layout(tmp_path):
    _make_filled(tmp_path, *[os.path.join("dukemtmc-reid", d) for d in MARKET_DIRS])
    assert _raises("dukemtmcreid", tmp_path).missing == os.path.join(str(tmp_path), "dukemtmc-reid", "DukeMTMC-reID")
    _make_filled(tmp_path, *[os.path.join("dukemtmc-reid", "DukeMTMC-reID", d) for d in MARKET_DIRS])
    check_dataset_layout("dukemtmcreid", str(tmp_path))


@pytest.mark.parametrize("version,dirs", [("MSMT17_V1", ["train", "test"]),
                                          ("MSMT17_V2", ["mask_train_v2", "mask_test_v2"])])
def test_msmt17_versions(tmp_path, version, dirs):
    base = os.path.join("msmt17", version)
    _make_filled(tmp_path, *[os.path.join(base, d) for d in dirs + MSMT17_LISTS])
    check_dataset_layout("msmt17", str(tmp_path))
    os.remove(tmp_path / base / "list_gallery.txt")
    error = _raises("msmt17", tmp_path)
    _assert_message(error, "msmt17", os.path.join(str(tmp_path), base, "list_gallery.txt"), str(tmp_path),
                    "mask_train_v2/")


def test_msmt17_v2_needs_its_own_folder_names(tmp_path):
    _make(tmp_path, *[os.path.join("msmt17", "MSMT17_V2", d) for d in ["train", "test"] + MSMT17_LISTS])
    assert _raises("msmt17", tmp_path).missing == os.path.join(str(tmp_path), "msmt17", "MSMT17_V2", "mask_train_v2")


def test_msmt17_without_a_version_folder(tmp_path):
    _make(tmp_path, "msmt17/train")
    error = _raises("msmt17", tmp_path)
    v1, v2 = (os.path.join(str(tmp_path), "msmt17", v) for v in ("MSMT17_V1", "MSMT17_V2"))
    assert error.missing == v1
    assert str(error).startswith(f"Dataset 'msmt17' is incomplete: none of {v1}, {v2} exists.")


def test_cuhk03_layout(tmp_path):
    _make(tmp_path, *[os.path.join("cuhk03", f) for f in CUHK03_FILES])
    check_dataset_layout("cuhk03", str(tmp_path))
    os.remove(tmp_path / "cuhk03" / "cuhk03_new_protocol_config_labeled.mat")
    error = _raises("cuhk03", tmp_path)
    _assert_message(error, "cuhk03", os.path.join(str(tmp_path), "cuhk03", "cuhk03_new_protocol_config_labeled.mat"),
                    str(tmp_path), "cuhk-03.mat")


def test_unknown_and_generated_datasets_pass(tmp_path):
    check_dataset_layout("someones_own_dataset", str(tmp_path / "no-such-root"))
    check_datasets(["synthetic_a", "synthetic_b"], str(tmp_path))
    assert EXPECTED_LAYOUTS["synthetic_a"].folder == "synthetic_a" and EXPECTED_LAYOUTS["synthetic_b"].generated
    assert os.listdir(tmp_path) == []  # a check, not a generator


def test_check_datasets_checks_every_name(tmp_path):
    _make_filled(tmp_path, *[os.path.join("market1501", d) for d in MARKET_DIRS])
    check_datasets("market1501", str(tmp_path))  # a single name, as torchreid's sources may be
    with pytest.raises(DatasetLayoutError, match="'dukemtmcreid'"):
        check_datasets(["market1501", "synthetic_a", "dukemtmcreid"], str(tmp_path))


def test_register_layout_adds_a_checked_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(layouts, "EXPECTED_LAYOUTS", dict(EXPECTED_LAYOUTS))
    register_layout("my_set", DatasetLayout(folder="mine", tree="mine/\n    images/", required=("images",)))
    _make(tmp_path, "mine")
    error = _raises("my_set", tmp_path)
    _assert_message(error, "my_set", os.path.join(str(tmp_path), "mine", "images"), str(tmp_path), "mine/\n")
    _make(tmp_path, "mine/images")
    check_dataset_layout("my_set", str(tmp_path))


# Cross-check against torchreid itself, on minimal trees that it loads: our check must pass on
# them, and removing any folder or list/.mat file must break both our check and torchreid. So a
# path we fail to require, or one we require needlessly, shows up here. (The dataset folder itself
# is never removed: torchreid would then try to download Market or Duke.)
def _populate_cuhk03(root: Path) -> None:
    _make(root, *[os.path.join("cuhk03", f) for f in CUHK03_FILES], "cuhk03/images_detected", "cuhk03/images_labeled")
    split = [{"train": [["/x/1_001_1_01.png", 0, 0]], "query": [["/x/1_002_1_01.png", 1, 0]],
              "gallery": [["/x/1_002_2_06.png", 1, 1]]}]
    for name in ("classic_detected", "classic_labeled", "new_detected", "new_labeled"):
        (root / "cuhk03" / f"splits_{name}.json").write_text(json.dumps(split))


def _populate_msmt17(root: Path, version: str, dirs: list) -> None:
    base = root / "msmt17" / version
    _make(root, *[os.path.join("msmt17", version, d) for d in dirs])
    for list_file in MSMT17_LISTS:
        (base / list_file).write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n")


def _populate_market(root: Path, base: str, image: str) -> None:
    for d in MARKET_DIRS:
        _make(root, os.path.join(base, d, image))


TORCHREID_CASES = {
    "market1501/versioned": ("market1501", lambda r: _populate_market(
        r, "market1501/Market-1501-v15.09.15", "0001_c1s1_000151_01.jpg")),
    "market1501/direct": ("market1501", lambda r: _populate_market(r, "market1501", "0001_c1s1_000151_01.jpg")),
    "dukemtmcreid": ("dukemtmcreid", lambda r: _populate_market(
        r, "dukemtmc-reid/DukeMTMC-reID", "0001_c2_f0046182.jpg")),
    "msmt17/V1": ("msmt17", lambda r: _populate_msmt17(r, "MSMT17_V1", ["train", "test"])),
    "msmt17/V2": ("msmt17", lambda r: _populate_msmt17(r, "MSMT17_V2", ["mask_train_v2", "mask_test_v2"])),
    "cuhk03": ("cuhk03", _populate_cuhk03),
}


def _torchreid_loads(name: str, root: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Market's "deprecated data structure" warning
            reid_data.datasets.init_image_dataset(name, root=str(root), verbose=False)
    except (RuntimeError, AssertionError, OSError):
        return False
    return True


# What torchreid's CUHK03 writes itself on first use: their absence is not a layout problem.
CUHK03_OUTPUTS = {"images_detected", "images_labeled"}


@pytest.mark.parametrize("case", sorted(TORCHREID_CASES))
def test_layouts_require_exactly_what_torchreid_needs(tmp_path, case):
    name, populate = TORCHREID_CASES[case]
    root = tmp_path / "data"
    populate(root)
    check_dataset_layout(name, str(root))
    assert _torchreid_loads(name, root)

    folder = root / EXPECTED_LAYOUTS[name].folder
    # Images are content, not layout; CUHK03's split files (.json) are torchreid's outputs too.
    structure = [path.relative_to(folder) for path in sorted(folder.rglob("*"))
                 if (path.is_dir() or path.suffix in (".txt", ".mat")) and path.name not in CUHK03_OUTPUTS]
    assert len(structure) >= 3
    for relative in structure:
        trial = tmp_path / "trial"
        shutil.copytree(folder, trial / folder.name)
        removed = trial / folder.name / relative
        if removed.is_dir():
            shutil.rmtree(removed)
        else:
            removed.unlink()
        try:
            check_dataset_layout(name, str(trial))
        except DatasetLayoutError:
            pass
        else:
            pytest.fail(f"the check passes {case} without {relative}")
        assert not _torchreid_loads(name, trial), f"torchreid loads {case} without {relative}: not required"
        shutil.rmtree(trial)
