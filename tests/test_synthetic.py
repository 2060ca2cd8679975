"""The synthetic two-domain data: Market-1501 layout, determinism, caching, and that its
identities are learnable and its domains differ (measured on the written images)."""
from __future__ import annotations

import hashlib
import json
import os.path as osp
import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchreid import data as reid_data

from dcac_plugin.data.synthetic import (DOMAINS, MARKER_NAME, SYNTHETIC_DATASETS, SyntheticA, SyntheticB, SyntheticSpec,
                                        ensure_synthetic_dataset, write_market_layout)

SMALL = SyntheticSpec(num_train_ids=8, images_per_train_id=6, num_test_ids=6, queries_per_test_id=2,
                      gallery_per_test_id=4, num_distractors=4, num_junk=2)
MARKET_NAME = re.compile(r"^(-1|\d{4})_c([1-6])s1_\d{6}_00\.jpg$")


def market_pid(path: str) -> int:
    """The pid written in a file name (torchreid relabels train pids to 0..N-1)."""
    return int(osp.basename(path).split("_c")[0])


def load_market(root: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reid_data.datasets.image.Market1501(root=str(root), verbose=False)


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_torchreid_market1501_parses_the_layout(tmp_path):
    write_market_layout(tmp_path / "market1501", "synthetic_a", SMALL)
    dataset = load_market(tmp_path)

    assert dataset.num_train_pids == SMALL.num_train_ids
    assert len(dataset.train) == SMALL.num_train_ids * SMALL.images_per_train_id
    assert len(dataset.query) == SMALL.num_test_ids * SMALL.queries_per_test_id
    # Junk (pid -1) is skipped by the loader; distractors (pid 0) stay in the gallery.
    assert len(dataset.gallery) == SMALL.num_test_ids * SMALL.gallery_per_test_id + SMALL.num_distractors
    gallery_files = [p.name for p in (tmp_path / "market1501" / "bounding_box_test").iterdir()]
    assert sum(name.startswith("-1_c") for name in gallery_files) == SMALL.num_junk
    assert sum(market_pid(path) == 0 for path, *_ in dataset.gallery) == SMALL.num_distractors

    all_files = [p.name for p in (tmp_path / "market1501").rglob("*.jpg")]
    assert all(MARKET_NAME.match(name) for name in all_files)
    assert len(set(all_files)) == len(all_files)  # names are unique across the three folders
    image = Image.open(dataset.train[0][0])
    assert image.size == (64, 128) and image.mode == "RGB"

    train_pids = {market_pid(path) for path, *_ in dataset.train}
    query_pids = {pid for _, pid, *_ in dataset.query}
    assert len(train_pids) == SMALL.num_train_ids and len(query_pids) == SMALL.num_test_ids
    assert not train_pids & query_pids
    assert {pid for _, pid, *_ in dataset.gallery} - {0} == query_pids
    for items in (dataset.train, dataset.query, dataset.gallery):
        assert {camid for _, _, camid, *_ in items} <= set(range(SMALL.num_cameras))
    for pid in train_pids:
        assert len({camid for path, _, camid, *_ in dataset.train if market_pid(path) == pid}) >= 3
    gallery_views = {(pid, camid) for _, pid, camid, *_ in dataset.gallery}
    for _, pid, camid, *_ in dataset.query:
        assert any(p == pid and c != camid for p, c in gallery_views)
    per_id_query_cams = {}
    for _, pid, camid, *_ in dataset.query:
        per_id_query_cams.setdefault(pid, []).append(camid)
    assert all(len(set(cams)) == len(cams) for cams in per_id_query_cams.values())


def test_same_spec_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    first = file_digests(write_market_layout(tmp_path / "one", "synthetic_b", SMALL))
    second = file_digests(write_market_layout(tmp_path / "two", "synthetic_b", SMALL))
    assert first == second
    other = file_digests(write_market_layout(tmp_path / "three", "synthetic_b", replace(SMALL, seed=7)))
    images = {digest for name, digest in first.items() if name.endswith(".jpg")}
    assert not images & set(other.values())


def test_ensure_reuses_a_complete_dataset_and_regenerates_a_stale_one(tmp_path):
    path = ensure_synthetic_dataset(tmp_path, "synthetic_a", SMALL)
    assert path == tmp_path / "synthetic_a"
    marker = path / MARKER_NAME
    stamp = marker.stat().st_mtime_ns
    some_image = next((path / "query").iterdir())
    image_stamp = some_image.stat().st_mtime_ns

    assert ensure_synthetic_dataset(tmp_path, "synthetic_a", SMALL) == path
    assert marker.stat().st_mtime_ns == stamp and some_image.stat().st_mtime_ns == image_stamp

    marker.unlink()  # what an interrupted copy or a manual edit would leave
    ensure_synthetic_dataset(tmp_path, "synthetic_a", SMALL)
    assert marker.exists()
    assert json.loads(marker.read_text())["spec"]["seed"] == DOMAINS["synthetic_a"].default_seed

    bigger = replace(SMALL, num_test_ids=SMALL.num_test_ids + 1)
    ensure_synthetic_dataset(tmp_path, "synthetic_a", bigger)
    assert json.loads(marker.read_text())["spec"]["num_test_ids"] == bigger.num_test_ids
    assert len(list((path / "query").iterdir())) == bigger.num_test_ids * bigger.queries_per_test_id
    # Staging and replaced folders are cleaned up.
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic_a"]


def test_ensure_rejects_unknown_names_and_foreign_folders(tmp_path):
    with pytest.raises(KeyError, match="synthetic_a.*synthetic_b"):
        ensure_synthetic_dataset(tmp_path, "market1501")
    foreign = tmp_path / "synthetic_b"
    foreign.mkdir()
    (foreign / "readme.txt").write_text("someone's real data")
    with pytest.raises(FileExistsError):
        ensure_synthetic_dataset(tmp_path, "synthetic_b", SMALL)
    assert (foreign / "readme.txt").exists()


def body_colour_features(dataset_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Mean RGB of the upper and the lower body region of every train image, and its pid."""
    features, pids = [], []
    for path in sorted((dataset_dir / "bounding_box_train").iterdir()):
        image = np.asarray(Image.open(path), dtype=np.float32) / 255
        upper, lower = image[38:64, 22:42], image[77:109, 22:42]
        features.append(np.concatenate([upper.mean((0, 1)), lower.mean((0, 1))]))
        pids.append(market_pid(path.name))
    return np.stack(features), np.asarray(pids)


def nearest_class_mean_accuracy(features: np.ndarray, pids: np.ndarray) -> float:
    """Class means from every other image of each id, scored on the remaining images."""
    fit = np.zeros(len(pids), dtype=bool)
    for pid in np.unique(pids):
        fit[np.flatnonzero(pids == pid)[::2]] = True
    classes = np.unique(pids)
    means = np.stack([features[fit & (pids == pid)].mean(0) for pid in classes])
    distances = ((features[~fit, None] - means[None]) ** 2).sum(-1)
    return float((classes[distances.argmin(1)] == pids[~fit]).mean())


def mean_saturation_and_brightness(dataset_dir: Path) -> tuple[float, float]:
    hsv = np.stack([np.asarray(Image.open(p).convert("HSV"), dtype=np.float32) / 255
                    for p in sorted((dataset_dir / "bounding_box_train").iterdir())])
    return float(hsv[..., 1].mean()), float(hsv[..., 2].mean())


def test_identities_are_learnable_and_domains_differ(tmp_path):
    spec = SyntheticSpec(num_train_ids=16, images_per_train_id=8, num_test_ids=1, gallery_per_test_id=1,
                         num_distractors=0, num_junk=0)
    folders = {name: write_market_layout(tmp_path / name, name, spec) for name in DOMAINS}
    chance = 1 / spec.num_train_ids
    # Mean colours of two body regions already tell most identities apart across cameras; the
    # muted domain B is harder, but still far above chance.
    assert nearest_class_mean_accuracy(*body_colour_features(folders["synthetic_a"])) > 0.6
    assert nearest_class_mean_accuracy(*body_colour_features(folders["synthetic_b"])) > max(0.4, 5 * chance)
    saturation_a, brightness_a = mean_saturation_and_brightness(folders["synthetic_a"])
    saturation_b, brightness_b = mean_saturation_and_brightness(folders["synthetic_b"])
    assert saturation_a - saturation_b > 0.1
    assert brightness_a - brightness_b > 0.05


def test_synthetic_a_builds_a_torchreid_dataset_on_first_use(tmp_path):
    assert SYNTHETIC_DATASETS == {"synthetic_a": SyntheticA, "synthetic_b": SyntheticB}
    assert issubclass(SyntheticA, reid_data.datasets.image.Market1501)
    assert SyntheticB.dataset_dir == "synthetic_b" and SyntheticB.dataset_url is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = SyntheticA(root=str(tmp_path), verbose=False)
    assert not [w for w in caught if "deprecated" in str(w.message)]
    assert isinstance(dataset, reid_data.ImageDataset)
    assert (tmp_path / "synthetic_a" / MARKER_NAME).exists()
    # The default sizes are the point here.
    default = SyntheticSpec()
    assert dataset.num_train_pids == default.num_train_ids
    assert len(dataset.train) == default.num_train_ids * default.images_per_train_id
    assert len(dataset.query) == default.num_test_ids * default.queries_per_test_id
    assert len(dataset.gallery) == default.num_test_ids * default.gallery_per_test_id + default.num_distractors
    assert dataset.num_train_cams == default.num_cameras

    stamp = (tmp_path / "synthetic_a" / MARKER_NAME).stat().st_mtime_ns
    SyntheticA(root=str(tmp_path), verbose=False, mode="query")
    assert (tmp_path / "synthetic_a" / MARKER_NAME).stat().st_mtime_ns == stamp
