"""The paper's datasets in each layout users hold them in, loaded through torchreid's own
ImageDataManager: torchreid's layouts (Market-1501, DukeMTMC-reID, MSMT17 with list files,
CUHK03 from the .mat release) and the DCAC authors' folders (``msmt17_folder``, ``cuhk03_np``).

Each case writes a tiny dataset in the real on-disk layout (``dataset_writers``) and checks that
exactly the written images come back in each split: training pids relabelled to 0..N-1, query and
gallery pids as written, 0-based cameras, junk and validation images left out; and, for several
sources, torchreid's per-source offsets of pids and cameras over the training splits only.
"""
from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import pytest
from dataset_writers import (Expected, write_cuhk03_mat, write_cuhk03_np, write_dukemtmcreid, write_market1501,
                             write_msmt17_folder, write_msmt17_lists)
from torchreid import data as reid_data

from dcac_config.generators.protocols import SAME_DOMAIN
from dcac_config.layouts import DatasetFileNameError, DatasetLayoutError, check_dataset_layout
from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path
from dcac_plugin.cli import main
from dcac_plugin.data.datasets import EXTRA_DATASETS
from dcac_plugin.data.msmt17 import MSMT17TrainVal, msmt17_train_with_val
from dcac_plugin.registration import register_all
from dcac_plugin.run.launcher import build_datamanager
from dcac_plugin.utils.toolbox_tables import image_dataset_table

# case: (registered name, writer, torchreid kwargs,
#        (train ids, train images, train cameras, query images, gallery images))
CASES: Dict[str, Tuple[str, Callable[[Path], Expected], dict, Tuple[int, int, int, int, int]]] = {
    "market1501": ("market1501", write_market1501, {}, (4, 8, 6, 2, 4)),
    "dukemtmcreid": ("dukemtmcreid", write_dukemtmcreid, {}, (3, 9, 8, 2, 3)),
    "msmt17-V1": ("msmt17", lambda root: write_msmt17_lists(root, "V1"), {}, (3, 15, 15, 2, 3)),
    "msmt17-V2": ("msmt17", lambda root: write_msmt17_lists(root, "V2"), {}, (3, 15, 15, 2, 3)),
    "cuhk03-detected": ("cuhk03", lambda root: write_cuhk03_mat(root)["detected"], {}, (4, 16, 2, 4, 4)),
    "cuhk03-labeled": ("cuhk03", lambda root: write_cuhk03_mat(root)["labeled"], {"cuhk03_labeled": True},
                       (4, 24, 2, 4, 8)),
    "msmt17_folder": ("msmt17_folder", write_msmt17_folder, {}, (4, 16, 15, 2, 3)),
    "cuhk03_np-detected": ("cuhk03_np", lambda root: write_cuhk03_np(root)["detected"], {}, (3, 6, 2, 2, 2)),
    "cuhk03_np-labeled": ("cuhk03_np", lambda root: write_cuhk03_np(root)["labeled"], {"cuhk03_labeled": True},
                          (3, 9, 2, 2, 3)),
    # The same release in the folder the DCAC authors' reader opens: <root>/cuhk03np/<protocol>/.
    "cuhk03_np-authors-detected": ("cuhk03_np", lambda root: write_cuhk03_np(root, folder="cuhk03np")["detected"], {},
                                   (3, 6, 2, 2, 2)),
    "cuhk03_np-authors-labeled": ("cuhk03_np", lambda root: write_cuhk03_np(root, folder="cuhk03np")["labeled"],
                                  {"cuhk03_labeled": True}, (3, 9, 2, 2, 3)),
}


def load(root: Path, sources: Sequence[str], **kwargs) -> reid_data.ImageDataManager:
    """torchreid's ImageDataManager over ``root``, small and on the CPU."""
    return reid_data.ImageDataManager(root=str(root), sources=list(sources), targets=list(sources), height=32,
                                      width=16, workers=0, batch_size_train=4, batch_size_test=4, use_gpu=False,
                                      **kwargs)


def as_loaded(items: List[Tuple[str, int, int]], dsetid: int = 0) -> List[tuple]:
    """Written (path, pid, camid) as torchreid lists them, with the dataset index it appends."""
    return sorted((path, pid, camid, dsetid) for path, pid, camid in items)


def assert_relabelled(train: List[tuple], written: List[Tuple[str, int, int]], pid_offset: int = 0,
                      cam_offset: int = 0, dsetid: int = 0) -> None:
    """``train`` holds exactly the ``written`` images, with cameras shifted by ``cam_offset`` and
    the written pids mapped one-to-one onto ``pid_offset`` .. ``pid_offset`` + N - 1."""
    by_path = {path: (pid, camid) for path, pid, camid in written}
    assert sorted(item[0] for item in train) == sorted(by_path)
    label_of: Dict[int, int] = {}
    for path, pid, camid, item_dsetid in train:
        written_pid, written_camid = by_path[path]
        assert (camid, item_dsetid) == (written_camid + cam_offset, dsetid)
        assert label_of.setdefault(written_pid, pid) == pid, f"written pid {written_pid} got two labels"
    assert sorted(label_of.values()) == list(range(pid_offset, pid_offset + len(label_of)))


@pytest.mark.parametrize("case", list(CASES))
def test_each_layout_loads_through_torchreid(tmp_path, case):
    name, write, kwargs, counts = CASES[case]
    root = tmp_path / "data"
    expected = write(root)
    check_dataset_layout(name, str(root))
    manager = load(root, [name], **kwargs)

    train = manager.train_loader.dataset.train
    query, gallery = manager.test_dataset[name]["query"], manager.test_dataset[name]["gallery"]
    assert (manager.num_train_pids, len(train), manager.num_train_cams, len(query), len(gallery)) == counts
    assert (expected.train_ids, len(expected.train), expected.train_cameras, len(expected.query),
            len(expected.gallery)) == counts
    assert_relabelled(train, expected.train)
    assert sorted(query) == as_loaded(expected.query)  # pids not relabelled
    assert sorted(gallery) == as_loaded(expected.gallery)
    listed = {item[0] for item in train + query + gallery}
    assert listed.isdisjoint(expected.excluded)
    # The listed files are real images that torchreid's loaders read.
    assert next(iter(manager.train_loader))["img"].shape == (4, 3, 32, 16)
    assert next(iter(manager.test_loader[name]["gallery"]))["img"].shape[1:] == (3, 32, 16)


def test_multi_source_offsets_identities_and_cameras_over_training_splits_only(tmp_path):
    root = tmp_path / "data"
    sources = ["market1501", "msmt17_folder", "cuhk03_np"]
    written = [write_market1501(root), write_msmt17_folder(root), write_cuhk03_np(root)["detected"]]
    manager = load(root, sources)

    train = manager.train_loader.dataset.train
    assert manager.num_train_pids == 4 + 4 + 3 == sum(w.train_ids for w in written)
    assert manager.num_train_cams == 6 + 15 + 2 == sum(w.train_cameras for w in written)
    assert len(train) == 8 + 16 + 6
    pid_offset = cam_offset = 0
    for dsetid, source in enumerate(written):
        assert_relabelled([item for item in train if item[3] == dsetid], source.train, pid_offset, cam_offset, dsetid)
        pid_offset += source.train_ids
        cam_offset += source.train_cameras
    not_for_training = {path for w in written for path in
                        [p for p, _, _ in w.query + w.gallery] + w.excluded}
    assert {item[0] for item in train}.isdisjoint(not_for_training)
    # Each target is still evaluated on its own, unshifted query and gallery.
    for name, source in zip(sources, written):
        assert sorted(manager.test_dataset[name]["query"]) == as_loaded(source.query)
        assert sorted(manager.test_dataset[name]["gallery"]) == as_loaded(source.gallery)


@pytest.mark.parametrize("name,write,data_dir", [("msmt17_folder", write_msmt17_folder, "MSMT17"),
                                                 ("cuhk03_np", write_cuhk03_np, os.path.join("cuhk03-np", "detected"))])
def test_missing_gallery_folder_names_the_path(tmp_path, name, write, data_dir):
    root = tmp_path / "data"
    write(root)
    shutil.rmtree(root / data_dir / "bounding_box_test")
    missing = os.path.join(str(root), data_dir, "bounding_box_test")
    with pytest.raises(DatasetLayoutError) as caught:
        check_dataset_layout(name, str(root))
    assert (caught.value.dataset, caught.value.missing, caught.value.root) == (name, missing, str(root))
    assert f"{missing} does not exist" in str(caught.value)
    assert "bounding_box_train/" in str(caught.value)  # the expected tree
    # Built by torchreid directly (without the pre-flight check) it fails the same way.
    with pytest.raises(DatasetLayoutError) as caught:
        load(root, [name])
    assert caught.value.missing == missing


@pytest.mark.parametrize("name", list(EXTRA_DATASETS))
def test_missing_dataset_is_not_downloaded(tmp_path, name):
    with pytest.raises(DatasetLayoutError, match="is not in the data root"):
        load(tmp_path, [name])
    assert os.listdir(tmp_path) == []


def test_cuhk03_np_with_the_detected_subset_only(tmp_path):
    expected = write_cuhk03_np(tmp_path, subsets=("detected",))["detected"]
    assert sorted(os.listdir(tmp_path / "cuhk03-np")) == ["detected"]
    check_dataset_layout("cuhk03_np", str(tmp_path))
    manager = load(tmp_path, ["cuhk03_np"])
    assert_relabelled(manager.train_loader.dataset.train, expected.train)

    with pytest.raises(DatasetLayoutError) as caught:
        load(tmp_path, ["cuhk03_np"], cuhk03_labeled=True)
    assert caught.value.missing == os.path.join(str(tmp_path), "cuhk03-np", "labeled")
    assert "cuhk03.labeled_images is True" in str(caught.value)


def test_cuhk03_np_in_both_folders_reads_the_authors_and_says_so(tmp_path, capsys):
    authors = write_cuhk03_np(tmp_path, subsets=("detected",), folder="cuhk03np")["detected"]
    write_cuhk03_np(tmp_path, folder="cuhk03-np")
    manager = load(tmp_path, ["cuhk03_np"])
    assert_relabelled(manager.train_loader.dataset.train, authors.train)
    chosen, other = (os.path.join(str(tmp_path), folder, "detected") for folder in ("cuhk03np", "cuhk03-np"))
    assert (f"Dataset 'cuhk03_np': {chosen} and {other} both exist; reading {chosen} (the DCAC authors' folder "
            "name comes first)") in capsys.readouterr().out
    # The labeled subset is only in cuhk03-np/: read from there, nothing to say.
    labeled = load(tmp_path, ["cuhk03_np"], cuhk03_labeled=True).train_loader.dataset.train
    assert all(os.path.dirname(os.path.dirname(item[0])) == os.path.join(str(tmp_path), "cuhk03-np", "labeled")
               for item in labeled)
    assert "both exist" not in capsys.readouterr().out


def test_cuhk03_np_folder_linked_under_the_other_name_counts_once(tmp_path, capsys):
    expected = write_cuhk03_np(tmp_path, subsets=("detected",), folder="cuhk03-np")["detected"]
    os.symlink(tmp_path / "cuhk03-np", tmp_path / "cuhk03np")
    manager = load(tmp_path, ["cuhk03_np"])
    assert sorted(os.path.basename(item[0]) for item in manager.train_loader.dataset.train) == sorted(
        os.path.basename(path) for path, _, _ in expected.train)
    assert "both exist" not in capsys.readouterr().out


def test_cuhk03_np_missing_names_both_folders(tmp_path):
    (tmp_path / "market1501").mkdir()  # a data root, without CUHK03-NP
    with pytest.raises(DatasetLayoutError) as caught:
        check_dataset_layout("cuhk03_np", str(tmp_path))
    authors, published = (os.path.join(str(tmp_path), folder) for folder in ("cuhk03np", "cuhk03-np"))
    assert caught.value.missing == authors
    assert f"Dataset 'cuhk03_np' is not in the data root: none of {authors}, {published} exists." in str(caught.value)
    assert "cuhk03-np/, as the published" in str(caught.value)  # the tree names both


def test_cuhk03_np_authors_folder_without_the_subset_read_names_it(tmp_path):
    write_cuhk03_np(tmp_path, subsets=("labeled",), folder="cuhk03np")
    with pytest.raises(DatasetLayoutError) as caught:
        load(tmp_path, ["cuhk03_np"])
    assert caught.value.missing == os.path.join(str(tmp_path), "cuhk03np", "detected")
    assert "cuhk03.labeled_images is False" in str(caught.value)


def test_unparsable_names_and_cameras_are_named(tmp_path):
    write_msmt17_folder(tmp_path)
    train_dir = tmp_path / "MSMT17" / "bounding_box_train"
    shutil.copy(next(train_dir.iterdir()), train_dir / "0005_c16_0001.jpg")  # MSMT17 has c1..c15
    with pytest.raises(DatasetFileNameError, match=r'0005_c16_0001.jpg" has camera c16, outside c1..c15\. .*'
                                                   r"e\.g\. 0012_c14_0003\.jpg \(pid 12, camera 14\)"):
        load(tmp_path, ["msmt17_folder"])
    os.remove(train_dir / "0005_c16_0001.jpg")
    shutil.copy(next(train_dir.iterdir()), train_dir / "IMG_0001.jpg")
    with pytest.raises(DatasetFileNameError, match=r'IMG_0001.jpg" has no <pid>_c<camera> in its name\. .*'
                                                   r"Fix: rename or remove the file\."):
        load(tmp_path, ["msmt17_folder"])


def train_error(root: Path, dataset: str, capsys) -> str:
    """The message ``dcac train`` on ``dataset`` under ``root`` fails with, after checking how it fails."""
    code = main(["train", "--config-file", demo_config_path("baseline"), "-s", dataset, "-t", dataset,
                 "--root", str(root), "data.save_dir", str(root / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dcac: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err[len("dcac: error: "):].rstrip("\n")


def torchreid_reads(name: str, root: Path) -> Tuple[str, list]:
    """What torchreid's own reader makes of ``name`` under ``root``: ("ok", train) or (error type, [])."""
    try:
        return "ok", reid_data.datasets.init_image_dataset(name, root=str(root), verbose=False).train
    except Exception as error:  # what torchreid raises is the point here
        return type(error).__name__, []


MARKET_NAMES = "e.g. 0002_c1s1_000451_03.jpg (pid 2, camera 1), with cameras c1..c6. Fix: rename or remove the file."


def test_image_without_pid_and_camera_is_named_before_torchreid_reads(tmp_path, capsys):
    write_market1501(tmp_path)
    query = tmp_path / "market1501" / "Market-1501-v15.09.15" / "query"
    shutil.copy(next(query.iterdir()), query / "IMG_0001.jpg")
    assert torchreid_reads("market1501", tmp_path)[0] == "AttributeError"  # None.groups()
    assert train_error(tmp_path, "market1501", capsys) == (
        f'Dataset \'market1501\': image "{query / "IMG_0001.jpg"}" has no <pid>_c<camera> in its name. Its images '
        f"are named <pid>_c<camera>..., {MARKET_NAMES}")


@pytest.mark.parametrize("dataset,writer,folder,name,problem", [
    ("market1501", write_market1501, "market1501/Market-1501-v15.09.15", "0002_c7s1_000001_01.jpg",
     "has camera c7, outside c1..c6"),
    ("market1501", write_market1501, "market1501/Market-1501-v15.09.15", "0002_c01s1_000001_01.jpg",
     "has camera c01, of which torchreid reads one digit (c0)"),
    ("market1501", write_market1501, "market1501/Market-1501-v15.09.15", "1502_c1s1_000001_01.jpg",
     "has pid 1502, outside 0..1501 (-1 for junk)"),
    ("dukemtmcreid", write_dukemtmcreid, "dukemtmc-reid/DukeMTMC-reID", "0005_c9_f0000001.jpg",
     "has camera c9, outside c1..c8"),
])
def test_names_torchreid_only_asserts_on_are_named_with_the_valid_range(tmp_path, capsys, dataset, writer, folder,
                                                                        name, problem):
    writer(tmp_path)
    train_dir = tmp_path / folder / "bounding_box_train"
    shutil.copy(next(train_dir.iterdir()), train_dir / name)
    assert torchreid_reads(dataset, tmp_path)[0] == "AssertionError"
    message = train_error(tmp_path, dataset, capsys)
    assert message.startswith(f"Dataset {dataset!r}: image \"{train_dir / name}\" {problem}. Its images are named ")
    assert message.endswith(MARKET_NAMES if dataset == "market1501" else
                            "e.g. 0001_c2_f0046182.jpg (pid 1, camera 2), with cameras c1..c8. "
                            "Fix: rename or remove the file.")


def test_junk_images_are_left_to_torchreid_whatever_their_camera(tmp_path):
    write_market1501(tmp_path)
    train_dir = tmp_path / "market1501" / "Market-1501-v15.09.15" / "bounding_box_train"
    shutil.copy(next(train_dir.iterdir()), train_dir / "-1_c9s1_000001_01.jpg")  # skipped before its camera is read
    assert torchreid_reads("market1501", tmp_path)[0] == "ok"
    check_dataset_layout("market1501", str(tmp_path))


def test_a_data_root_named_like_an_image_is_named_instead_of_silently_parsed(tmp_path, capsys):
    root = tmp_path / "run_2_c1"
    written = write_market1501(root)
    # torchreid searches the whole path: every training image becomes pid 2's, camera 1's.
    status, train = torchreid_reads("market1501", root)
    assert status == "ok" and len(train) == len(written.train)
    assert {(pid, camid) for _, pid, camid, _ in train} == {(0, 0)}
    message = train_error(root, "market1501", capsys)
    assert message.startswith(f'Dataset \'market1501\': image "{root}{os.sep}market1501')
    assert (f"lies under the folder {root}, whose name holds '2_c1': torchreid takes pid and camera from the first "
            "<pid>_c<camera> in the whole path.") in message
    assert message.endswith("Fix: rename that folder, or move the dataset out of it.")


def test_our_readers_name_errors_reach_the_user_as_one_line(tmp_path, capsys):
    write_cuhk03_np(tmp_path, subsets=("detected",))
    query = tmp_path / "cuhk03-np" / "detected" / "query"
    shutil.copy(next(query.iterdir()), query / "0002_c3_9.png")
    assert train_error(tmp_path, "cuhk03_np", capsys) == (
        f'Dataset \'cuhk03_np\': image "{query / "0002_c3_9.png"}" has camera c3, outside c1..c2. Its images are '
        "named <pid>_c<camera>..., e.g. 0001_c1_1.png (pid 1, camera 1), with cameras c1..c2. "
        "Fix: rename or remove the file.")


def test_folder_without_images_of_the_format_is_named(tmp_path):
    write_cuhk03_np(tmp_path, subsets=("detected",))
    query = tmp_path / "cuhk03-np" / "detected" / "query"
    for png in query.iterdir():
        png.rename(png.with_suffix(".jpg"))  # the release is png; jpg files are not read
    with pytest.raises(DatasetLayoutError, match=r"has no usable \*\.png images in .*query"):
        load(tmp_path, ["cuhk03_np"])


def test_registration_is_idempotent_and_names_the_paper_domains():
    register_all()
    register_all()
    table = image_dataset_table()
    for name, cls in EXTRA_DATASETS.items():
        assert table[name] is cls
        assert name in SAME_DOMAIN


# ------------------------------------------------ MSMT17's whole training set (msmt17.train_with_val)


def launcher_manager(root: Path, sources: Sequence[str], *opts: str):
    """The data manager the launcher builds from a config over ``root`` (small, CPU)."""
    cfg = build_config(None, ["data.root", str(root), "data.sources", str(list(sources)),
                              "data.targets", str(list(sources)), "data.height", "32", "data.width", "16",
                              "data.workers", "0", "train.batch_size", "4", "test.batch_size", "4", *opts])
    return build_datamanager(cfg, use_gpu=False)


@pytest.mark.parametrize("version", ["V1", "V2"])
@pytest.mark.parametrize("train_with_val", [False, True])
def test_msmt17_trains_on_list_train_plus_list_val_only_with_the_key(tmp_path, version, train_with_val):
    written = write_msmt17_lists(tmp_path, version)
    manager = launcher_manager(tmp_path, ["msmt17"], "msmt17.train_with_val", str(train_with_val))

    expected = written.train + (written.validation if train_with_val else [])
    train = manager.train_loader.dataset.train
    assert len(train) == (len(written.train) + len(written.validation) if train_with_val else len(written.train))
    assert manager.num_train_pids == len({pid for _, pid, _ in expected})
    assert_relabelled(train, expected)
    # Query and gallery are the lists' own, whatever the key says.
    assert sorted(manager.test_dataset["msmt17"]["query"]) == as_loaded(written.query)
    assert sorted(manager.test_dataset["msmt17"]["gallery"]) == as_loaded(written.gallery)
    # The class swap lasted only while the manager was built.
    assert image_dataset_table()["msmt17"] is reid_data.datasets.image.MSMT17


def test_msmt17_with_combineall_adds_the_val_images_once(tmp_path):
    written = write_msmt17_lists(tmp_path)
    trains = {flag: sorted(launcher_manager(tmp_path, ["msmt17"], "data.combineall", "True",
                                            "msmt17.train_with_val", str(flag)).train_loader.dataset.train)
              for flag in (False, True)}
    # torchreid's combineall already trains on train + val + query + gallery; the key adds nothing to it.
    assert trains[True] == trains[False]
    paths = [item[0] for item in trains[True]]
    every_image = written.train + written.validation + written.query + written.gallery
    assert len(paths) == len(set(paths)) == len(every_image)
    assert set(paths) == {path for path, _, _ in every_image}


def test_msmt17_class_is_restored_when_building_fails(tmp_path, monkeypatch):
    write_msmt17_lists(tmp_path)
    table = image_dataset_table()

    def fail_while_reading(self, dir_path, list_path):
        assert isinstance(self, MSMT17TrainVal)  # the swapped-in class is the one building
        raise RuntimeError("read failed")

    monkeypatch.setattr(reid_data.datasets.image.MSMT17, "process_dir", fail_while_reading)
    with pytest.raises(RuntimeError, match="read failed"):
        launcher_manager(tmp_path, ["msmt17"], "msmt17.train_with_val", "True")
    assert table["msmt17"] is reid_data.datasets.image.MSMT17
    with pytest.raises(RuntimeError, match="inside"):
        with msmt17_train_with_val(True):
            assert table["msmt17"] is MSMT17TrainVal
            raise RuntimeError("inside")
    assert table["msmt17"] is reid_data.datasets.image.MSMT17


def write_authors_msmt17_folder(root: Path, written: Expected, test_pid_offset: int = 1041) -> None:
    """The same images in the authors' Market-style MSMT17 folder, whose ``bounding_box_train``
    holds MSMT17's whole training set (list_train and list_val images); test pids are moved past
    the training ones, as Market-style names need one pid space."""
    splits = {"bounding_box_train": (written.train + written.validation, 0),
              "query": (written.query, test_pid_offset), "bounding_box_test": (written.gallery, test_pid_offset)}
    for folder, (items, offset) in splits.items():
        (root / "MSMT17" / folder).mkdir(parents=True)
        for index, (path, pid, camid) in enumerate(items):
            shutil.copy(path, root / "MSMT17" / folder / f"{pid + offset:04d}_c{camid + 1}_{index:04d}.jpg")


def test_msmt17_folder_trains_on_its_whole_training_folder_like_msmt17_with_val(tmp_path):
    written = write_msmt17_lists(tmp_path)
    write_authors_msmt17_folder(tmp_path, written)
    folder = launcher_manager(tmp_path, ["msmt17_folder"])
    lists = launcher_manager(tmp_path, ["msmt17"], "msmt17.train_with_val", "True")

    def images_per_identity_and_camera(manager) -> list:
        return sorted(Counter((pid, camid) for _, pid, camid, _ in manager.train_loader.dataset.train).items())

    assert len(folder.train_loader.dataset.train) == len(written.train) + len(written.validation)
    assert (folder.num_train_pids, folder.num_train_cams) == (lists.num_train_pids, lists.num_train_cams)
    assert images_per_identity_and_camera(folder) == images_per_identity_and_camera(lists)


@pytest.mark.parametrize("line, problem", [
    ("a line without a label", "is not <image path> <pid>"),
    ("0001/0001_005_03_0303morning_0042_0.jpg  1", "is not <image path> <pid>"),
    ("0001/0001_005_03_0303morning_0042_0.jpg one", "has pid 'one', not a number"),
    ("0001/0001-005-03.jpg 1", "has no camera"),
    ("0001/0001_005_16_0303morning_0042_0.jpg 1", "has camera 16, outside 1..15"),
    ("0001/0001_005_00_0303morning_0042_0.jpg 1", "has camera 0, outside 1..15"),
])
def test_bad_msmt17_list_line_is_named_with_file_and_line(tmp_path, capsys, line, problem):
    """torchreid would stop with a bare ValueError / IndexError, or read a wrong camera silently."""
    written = write_msmt17_lists(tmp_path)
    list_file = Path(written.gallery[0][0]).parents[2] / "list_gallery.txt"
    lines = list_file.read_text().splitlines()
    list_file.write_text("\n".join(lines[:1] + [line] + lines[1:]) + "\n")
    code = main(["train", "--config-file", demo_config_path("baseline"), "-s", "msmt17", "-t", "msmt17",
                 "--root", str(tmp_path), "data.save_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dcac: error:") and "Traceback" not in err
    assert f"line 2 of {list_file}" in err and problem in err and "restore the list file" in err
    assert not (tmp_path / "run").exists()
