"""The classical multi-source DG classical_data (the DCAC authors' ``ClassicalMultiSourceDG``): training
on Market1501 + DukeMTMC-reID + CUHK02 + CUHK03-NP + CUHK-SYSU, testing on iLIDS, PRID, GRID and
VIPeR over their random splits, the mean reported.

Every dataset is written in its published layout (``dataset_writers``) and read by torchreid's
reader of that name; the shipped configs run end to end on them with the tiny models.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import train_error
from dataset_writers import (write_cuhk02, write_cuhk03_mat, write_cuhksysu, write_dukemtmcreid, write_grid,
                             write_ilids, write_market1501, write_prid, write_viper)
from torchreid import data as reid_data

from dcac_config.generators.protocols import CLASSICAL_SOURCES, CLASSICAL_TARGETS, paper_variant
from dcac_config.generators.rendering import PAPER_CONFIG_DIR
from dcac_config.layouts import EXPECTED_LAYOUTS, DatasetLayoutError, check_dataset_layout
from dcac_config.loading import build_config
from dcac_config.shipped import shipped_run_lists
from dcac_plugin.cli import main
from dcac_plugin.data.random_splits import STANDARD_SPLIT_IDS, split_key
from dcac_plugin.data.stable_labels import CUHK02StableLabels, CUHKSYSUStableLabels
from dcac_plugin.evaluation import mean_over_splits
from dcac_plugin.run.launcher import build_datamanager

SOURCES = ["market1501", "dukemtmcreid", "cuhk02", "cuhk03", "cuhksysu"]  # the authors' order, written out
TARGETS = ["ilids", "prid", "grid", "viper"]
# The tiny models and a CPU scale, over a shipped config.
TINY = ["use_gpu", "False", "model.name", "clip_vit_tiny", "model.pretrained", "False", "data.height", "64",
        "data.width", "32", "data.workers", "0", "train.max_epoch", "1", "train.batch_size", "8", "train.lr", "0.001",
        "train.print_freq", "100", "test.batch_size", "64"]


@pytest.fixture(scope="module")
def classical_data(tmp_path_factory):
    """A data root with every dataset of the classical_data in its published layout (VIPeR with 40
    persons, so the end-to-end runs evaluate its 10 splits quickly), and what each writer wrote."""
    root = tmp_path_factory.mktemp("classical-data")
    written = {"market1501": write_market1501(root), "dukemtmcreid": write_dukemtmcreid(root),
               "cuhk02": write_cuhk02(root), "cuhk03": write_cuhk03_mat(root)["detected"],
               "cuhksysu": write_cuhksysu(root), "ilids": write_ilids(root), "prid": write_prid(root),
               "grid": write_grid(root), "viper": write_viper(root, persons=40)}
    return str(root), written


def copy_of(root: str, tmp_path: Path, *datasets: str) -> str:
    """A fresh data root holding only ``datasets`` of ``root`` (without the split files torchreid wrote)."""
    fresh = tmp_path / "data"
    for name in datasets:
        folder = EXPECTED_LAYOUTS[name].folder
        shutil.copytree(os.path.join(root, folder), fresh / folder,
                        ignore=shutil.ignore_patterns("splits*.json"))
    return str(fresh)


def names(paths) -> set:
    return {os.path.basename(path) for path in paths}


def classical_cfg(root: str, target: str, *opts: str):
    """The shipped baseline config of the benchmark, tested on ``target`` only, at the tiny scale."""
    return build_config("classical/baseline_classical", ["data.root", root, "data.targets", f"['{target}']", *TINY,
                                                         *opts])


# ------------------------------------------------------------------------ layouts and readers


@pytest.mark.parametrize("name", ["cuhk02", "cuhksysu"] + TARGETS)
def test_layouts_are_checked_before_torchreid_reads_or_downloads(classical_data, tmp_path, name):
    root = copy_of(classical_data[0], tmp_path, name)
    check_dataset_layout(name, root)
    dataset = reid_data.datasets.init_image_dataset(name, root=root, verbose=False)
    assert dataset.train and dataset.query and dataset.gallery
    layout = EXPECTED_LAYOUTS[name]
    for relative in (".",) + layout.required:
        trial = tmp_path / f"trial-{relative.replace(os.sep, '-')}"
        shutil.copytree(os.path.join(root, layout.folder), trial / layout.folder)
        removed = trial / layout.folder / relative
        shutil.rmtree(removed) if removed.is_dir() else removed.unlink()
        with pytest.raises(DatasetLayoutError) as error:
            check_dataset_layout(name, str(trial))  # before torchreid, which would download iLIDS, GRID, VIPeR
        assert str(removed.resolve()) in str(error.value) and layout.tree.splitlines()[0] in str(error.value)


def test_cuhk02_and_cuhksysu_read_as_written(classical_data):
    root, written = classical_data
    for name, reader in (("cuhk02", CUHK02StableLabels), ("cuhksysu", CUHKSYSUStableLabels)):
        dataset = reader(root=root, verbose=False)
        expected = written[name]
        by_path = {path: (pid, camid) for path, pid, camid in expected.train}
        assert sorted(item[0] for item in dataset.train) == sorted(by_path)
        labels = {}
        for path, label, camid, _ in dataset.train:
            assert camid == by_path[path][1]
            assert labels.setdefault(by_path[path][0], label) == label
        assert sorted(labels.values()) == list(range(len(labels)))
        # labels follow the identities' first image paths, so they depend on the files only
        first_path = {pid: min(p for p, written_pid, _ in expected.train if written_pid == pid) for pid in labels}
        assert [labels[pid] for pid in sorted(labels, key=first_path.get)] == list(range(len(labels)))
        if name == "cuhk02":  # P5: query from cam1, gallery from cam2, pids as written
            assert sorted(item[:3] for item in dataset.query) == sorted(expected.query)
            assert sorted(item[:3] for item in dataset.gallery) == sorted(expected.gallery)
            assert len({pid for _, pid, _ in expected.train}) == 12  # pids restart per pair: 4 pairs x 3


def test_stable_labels_are_the_same_in_every_process(classical_data):
    root = classical_data[0]
    script = ("import sys, dcac_plugin\n"
              "from dcac_plugin.data.stable_labels import CUHK02StableLabels, CUHKSYSUStableLabels\n"
              "for cls in (CUHK02StableLabels, CUHKSYSUStableLabels):\n"
              "    print([item[:2] for item in cls(root=sys.argv[1], verbose=False).train])\n")
    here = "".join(f"{[item[:2] for item in cls(root=root, verbose=False).train]}\n"
                   for cls in (CUHK02StableLabels, CUHKSYSUStableLabels))
    seeds = {"0", "1"} - {os.environ.get("PYTHONHASHSEED")}  # another string hashing than this process's
    there = subprocess.run([sys.executable, "-c", script, root], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": sorted(seeds)[0]}).stdout
    assert there == here and here.count("\n") == 2


def test_random_split_targets_read_their_published_splits(classical_data, tmp_path):
    root, written = classical_data
    root = copy_of(root, tmp_path, *TARGETS)
    table = {name: [reid_data.datasets.init_image_dataset(name, root=root, split_id=k, verbose=False)
                    for k in range(10)] for name in TARGETS}
    for name, splits in table.items():
        for k, split in enumerate(splits):
            train_pids = {item[1] for item in split.train}
            query_paths = {item[0] for item in split.query}
            assert not query_paths & {item[0] for item in split.train}, (name, k)
            if name == "ilids":  # half the 119 persons train, each other one image in query and one in gallery
                assert (len(train_pids), len(split.query), len(split.gallery)) == (59, 60, 60)
            if name == "prid":  # 100 of the 200 persons in both views; cam_b's 549 others as distractors
                assert (len(split.query), len(split.gallery)) == (100, 649)
                assert {os.path.basename(item[0]) for item in split.query} <= names(written["prid"]["cam_a"].values())
                assert all(os.path.basename(os.path.dirname(item[0])) == "cam_a" for item in split.query)
            if name == "grid":  # the published partition: its 125 other persons are queried
                persons = set(range(1, 251)) - set(written["grid"].train_persons[k])
                assert {item[1] for item in split.query} == persons
                assert names(query_paths) == names(written["grid"].probe[p] for p in persons)
                assert len(split.gallery) == 125 + 775
            if name == "viper":  # 20 of the 40 persons, camera A to camera B in the even splits
                assert (len(split.query), len(split.gallery)) == (20, 20)
    viper = [reid_data.datasets.init_image_dataset("viper", root=root, split_id=k, verbose=False) for k in (4, 5)]
    assert viper[0].query == viper[1].gallery and viper[0].gallery == viper[1].query  # the odd id swaps the cameras
    assert STANDARD_SPLIT_IDS["viper"] == (0, 2, 4, 6, 8, 10, 12, 14, 16, 18)
    assert all(STANDARD_SPLIT_IDS[name] == tuple(range(10)) for name in ("ilids", "prid", "grid"))


# --------------------------------------------------------------------------- the training set


def offsets_by_source(manager, written) -> list:
    """(pid range, camera range) of each source's images in the combined training set, in source order."""
    train = manager.train_loader.dataset.train
    ranges = []
    for dsetid, name in enumerate(SOURCES):
        mine = [item for item in train if item[3] == dsetid]
        assert {item[0] for item in mine} >= {path for path, _, _ in written[name].train}
        pids, cams = sorted({item[1] for item in mine}), sorted({item[2] for item in mine})
        assert pids == list(range(pids[0], pids[-1] + 1)) and cams == list(range(cams[0], cams[-1] + 1))
        ranges.append(((pids[0], pids[-1] + 1), (cams[0], cams[-1] + 1)))
    return ranges


def test_training_set_is_the_sources_training_splits_offset_in_the_authors_order(classical_data):
    root, written = classical_data
    assert list(CLASSICAL_SOURCES) == SOURCES and list(CLASSICAL_TARGETS) == TARGETS
    manager = build_datamanager(classical_cfg(root, "viper"), use_gpu=False)
    # ids: MA 4, D 3, C2 12 (P1-P4), C3 4, CS 4; cameras: MA 6, D 8, C2 8, C3 2, CS 1
    assert offsets_by_source(manager, written) == [((0, 4), (0, 6)), ((4, 7), (6, 14)), ((7, 19), (14, 22)),
                                                   ((19, 23), (22, 24)), ((23, 27), (24, 25))]
    train_paths = {item[0] for item in manager.train_loader.dataset.train}
    assert train_paths == {path for name in SOURCES for path, _, _ in written[name].train}
    assert manager.num_train_pids == 27


def test_all_for_train_adds_the_sources_query_and_gallery(classical_data):
    root, written = classical_data
    manager = build_datamanager(classical_cfg(root, "viper", "data.combineall", "True"), use_gpu=False)
    train_paths = {item[0] for item in manager.train_loader.dataset.train}
    for name in ("market1501", "dukemtmcreid", "cuhk02", "cuhk03"):
        kept = [path for path, pid, _ in written[name].query + written[name].gallery if pid > 0]
        assert set(kept) <= train_paths, name
    # Market's distractors (pid 0) stay out, as torchreid's combineall leaves its junk pids out
    assert not {path for path, pid, _ in written["market1501"].gallery if pid == 0} & train_paths
    # ids: MA 4+2, D 3+2, C2 12+3 (P5), C3 4+2, CS 4; cameras counted after combining: C2 has P5's two more
    assert offsets_by_source(manager, written) == [((0, 6), (0, 6)), ((6, 11), (6, 14)), ((11, 26), (14, 24)),
                                                   ((26, 32), (24, 26)), ((32, 36), (26, 27))]


# --------------------------------------------------------------------------- evaluation over splits


def test_each_target_gets_one_loader_pair_per_standard_split(classical_data, tmp_path):
    root = copy_of(classical_data[0], tmp_path, *SOURCES, *TARGETS)
    cfg = build_config("classical/baseline_classical", ["data.root", root, *TINY])  # the four targets, as shipped
    manager = build_datamanager(cfg, use_gpu=False)
    keys = [split_key(name, k) for name in TARGETS for k in STANDARD_SPLIT_IDS[name]]
    assert list(manager.test_loader) == keys and manager.split_keys == {
        split_key(name, k): (name, k) for name in TARGETS for k in STANDARD_SPLIT_IDS[name]}
    for key, (name, k) in manager.split_keys.items():
        direct = reid_data.datasets.init_image_dataset(name, root=root, split_id=k, verbose=False)
        for mode in ("query", "gallery"):
            loaded = manager.test_loader[key][mode].dataset.data
            assert loaded == getattr(direct, mode) == manager.test_dataset[key][mode], (key, mode)
    # test.split_ids chooses the ids
    chosen = build_datamanager(classical_cfg(root, "grid", "test.split_ids", "[3, 7]"), use_gpu=False)
    assert list(chosen.test_loader) == list(chosen.split_keys) == ["grid/split3", "grid/split7"]


def test_split_ids_out_of_range_end_in_one_line(tmp_path, capsys):
    message = train_error(tmp_path, capsys, "data.targets", "['viper', 'grid']", "test.split_ids", "[12]")
    assert message.startswith("test.split_ids [12] names split 12, but target 'grid' has splits 0..9.")
    message = train_error(tmp_path, capsys, "data.targets", "['ilids']", "test.split_ids", "[-1]")
    assert "names split -1" in message and "[] for its standard 10 (0, 1, 2" in message


def test_mean_over_splits_keeps_every_split():
    per_split = {4: {"rank1": 0.5, "mAP": 0.25, "mINP": 0.1}, 0: {"rank1": 0.75, "mAP": 0.5, "mINP": 0.2}}
    summary = mean_over_splits(per_split)
    assert summary["rank1"] == pytest.approx(0.625) and summary["mAP"] == pytest.approx(0.375)
    assert summary["split_ids"] == [0, 4] and summary["splits"]["4"] == per_split[4]


def test_classical_configs_and_run_list():
    lists = shipped_run_lists()
    entries = [line for line in open(lists["classical"]).read().splitlines() if line and not line.startswith("#")]
    # One training per engine, evaluated on each target (the authors train the same model once per target).
    assert entries == ["../classical/baseline_classical.yaml", "../classical/dcac_classical.yaml"]
    for engine in ("baseline", "dcac"):
        path = os.path.join(PAPER_CONFIG_DIR, "classical", f"{engine}_classical.yaml")
        cfg = build_config(path, [])
        assert cfg.engine == engine and paper_variant(cfg) == engine
        assert list(cfg.data.sources) == SOURCES and list(cfg.data.targets) == TARGETS
        assert cfg.data.combineall is False and list(cfg.test.split_ids) == []
        assert cfg.cuhk03.labeled_images is False and cfg.cuhk03.classic_split is False  # CUHK03-NP detected
        assert cfg.dcac.test_resize_interpolation == "bicubic"  # the authors' multi-source test loader
        if engine == "dcac":  # section 5.2's multi-source setting
            assert cfg.dcac.lora.rank == 32 and cfg.dcac.condition.temperature == 1.0
        assert "combineall: False   # the authors' all_for_train" in open(path).read()


# --------------------------------------------------------------------------- end to end


def test_dcac_trains_on_the_five_sources_and_reports_the_mean_over_viper_splits(classical_data, tmp_path, tiny_sd):
    root = copy_of(classical_data[0], tmp_path, *SOURCES, "viper")
    out = tmp_path / "out"
    code = main(["experiments", "--root", root, "--out", str(out), "classical/dcac_classical", *TINY,
                 "data.targets", "['viper']", "dcac.diffusion.pretrained", tiny_sd, "dcac.diffusion.image_size", "32"])
    assert code == 0
    run = out / "dcac_classical"
    summary = json.load(open(run / "results.json"))
    assert summary["sources"] == SOURCES and summary["targets"] == ["viper"]
    viper = summary["results"]["viper"]
    assert viper["split_ids"] == list(range(0, 20, 2)) and sorted(viper["splits"], key=int) == [
        str(k) for k in range(0, 20, 2)]
    for metric in ("mAP", "rank1", "mINP"):
        assert viper[metric] == pytest.approx(np.mean([split[metric] for split in viper["splits"].values()]))
    assert all(0 < split["mAP"] <= 1 for split in viper["splits"].values())
    log = open(next(run.glob("train.log-*"))).read()
    assert "viper: evaluated on each of its splits 0, 2, 4, 6, 8, 10, 12, 14, 16, 18 (query/gallery images: 20/20)" \
        in log
    assert f"** viper: mean over its 10 splits ** mAP: {viper['mAP']:.1%}, Rank-1: {viper['rank1']:.1%}" in log
    # trained on the 27 identities of the five sources' training splits
    from dcac_plugin.utils.checkpoint import load_checkpoint
    assert load_checkpoint(str(run / "model" / "latest.pth.tar"))["state_dict"]["classifier.weight"].shape[0] == 27

    with open(out / "results.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["split"] for row in rows] == ["mean"] + [str(k) for k in range(0, 20, 2)]
    assert rows[0]["mAP"] == f"{100 * viper['mAP']:.2f}"
    assert rows[0]["setting"] == "MA+D+C2+C3+CS->VIPeR (mean of 10 splits)"
    assert rows[3]["mAP"] == f"{100 * viper['splits']['4']['mAP']:.2f}" and rows[3]["setting"] == "MA+D+C2+C3+CS->VIPeR"
    table = open(out / "results.md").read().splitlines()
    assert len(table) == 3 and f"| MA+D+C2+C3+CS->VIPeR (mean of 10 splits) | dcac model=clip_vit_tiny | " \
        f"{100 * viper['mAP']:.1f} | {100 * viper['rank1']:.1f} |" in table[2]
