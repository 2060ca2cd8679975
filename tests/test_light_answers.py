"""``dcac`` answers what needs no model before it imports torch, torchreid, torchvision, diffusers,
peft or open_clip: the config listing and printing, every command's --help, the errors of a
config, and a training run's missing data root or dataset folder (ended as the run would end it:
its configuration shown, its folder's rules kept). Each case runs in a fresh interpreter, which
then reports the heavy modules it holds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "torchreid", "torchvision", "diffusers", "peft", "open_clip", "dcac_plugin")

PROBE = textwrap.dedent("""
    import contextlib, io, json, sys
    from dcac_cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(sys.argv[1:])
        except SystemExit as exit:
            status = exit.code
    print(json.dumps({"status": status, "out": out.getvalue(), "err": err.getvalue(),
                      "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""").replace("HEAVY", repr(HEAVY))


def answer(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_probe_sees_a_heavy_import():
    """The probe can fail: a command that needs the model (dcac stats) does import torch."""
    found = answer("stats", "--config-file", "demo_baseline", "--batch-size", "2")
    assert found["status"] == 0 and "torch" in found["heavy"] and "dcac_plugin" in found["heavy"]


def test_listing_and_printing_configs_import_no_model():
    listed = answer("configs")
    assert listed["status"] == 0 and "single/dcac_market1501_to_msmt17" in listed["out"] and listed["heavy"] == []
    printed = answer("config", "--config-file", "single/dcac_market1501_to_msmt17", "train.lr", "1e-5")
    assert printed["status"] == 0 and printed["heavy"] == []
    assert "lr: 1.0e-05" in printed["out"] and "name: clip_vit_b16" in printed["out"]


HELP = [["--help"], ["train", "--help"], ["config", "--help"], ["configs", "--help"], ["stats", "--help"],
        ["bench", "--help"], ["bench", "train", "--help"], ["bench", "eval", "--help"], ["demo", "--help"],
        ["experiments", "--help"], ["extract", "--help"], ["export", "--help"], ["visualize", "--help"],
        ["visualize", "ranked", "--help"], ["visualize", "gradcam", "--help"], ["visualize", "curves", "--help"]]


@pytest.mark.parametrize("argv", HELP, ids=" ".join)
def test_every_help_imports_no_model(argv):
    found = answer(*argv)
    assert found["status"] == 0 and found["out"].startswith("usage: dcac") and found["heavy"] == []


def errors(tmp_path) -> dict:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  name: [unclosed\n")
    return {
        "config file not found": (["train", "--config-file", str(tmp_path / "none.yaml")], "none.yaml"),
        "shipped name misspelt": (["train", "--config-file", "single/dcac_market1501_to_msmt1"], "msmt17"),
        "YAML error": (["config", "--config-file", str(bad_yaml)], "bad.yaml"),
        "unknown key": (["train", "--config-file", "demo_baseline", "train.lrr", "1"], "train.lr"),
        "value of the wrong type": (["stats", "--config-file", "demo_baseline", "train.max_epoch", "many"],
                                    "train.max_epoch"),
        "value out of range": (["train", "--config-file", "demo_baseline", "train.lr", "-1"], "train.lr is -1"),
        "temperature out of range": (["stats", "--config-file", "demo_dcac", "dcac.pcl.temperature", "0"],
                                     "dcac.pcl.temperature"),
        # Reported before the target's missing folder, as the run reports it.
        "split id out of range": (["train", "--config-file", "demo_baseline", "-t", "viper", "--root",
                                   str(tmp_path / "no-data"), "test.split_ids", "[20]"],
                                  "names split 20, but target 'viper' has splits 0..19"),
    }


CASES = ["config file not found", "shipped name misspelt", "YAML error", "unknown key", "value of the wrong type",
         "value out of range", "temperature out of range", "split id out of range"]


@pytest.mark.parametrize("case", CASES)
def test_errors_that_need_no_model_come_before_any_model_import(case, tmp_path):
    argv, named = errors(tmp_path)[case]
    found = answer(*argv)
    lines = found["err"].strip().splitlines()
    assert found["status"] == 2 and lines[0].startswith("dcac: error: ") and named in found["err"]
    assert "Traceback" not in found["err"] and found["heavy"] == []


# ---------------------------------------------------------------- a missing dataset folder


def train_market(root, save_dir) -> dict:
    """``dcac train`` of the tiny baseline on Market-1501 under ``root``, in a fresh interpreter."""
    return answer("train", "--config-file", "demo_baseline", "-s", "market1501", "-t", "market1501", "--root",
                  str(root), "data.save_dir", str(save_dir))


def assert_one_error_line(found: dict, named: str) -> None:
    assert found["status"] == 2 and found["err"].startswith("dcac: error: ") and named in found["err"]
    assert "Traceback" not in found["err"]


@pytest.mark.parametrize("missing", ["data root", "dataset folder"])
def test_a_missing_dataset_folder_ends_the_run_before_any_model_import(missing, tmp_path):
    root = tmp_path / "data"
    if missing == "dataset folder":
        (root / "dukemtmc-reid").mkdir(parents=True)  # another dataset is there, not this one
    found = train_market(root, tmp_path / "runs" / "m2m")
    assert found["heavy"] == []
    assert_one_error_line(found, {"data root": f"Data root {root} does not exist",
                                  "dataset folder": f"{root / 'market1501'} does not exist"}[missing])
    assert "bounding_box_train/" in found["err"] and "--root" in found["err"]  # the expected tree and the fix
    assert found["out"].startswith("Show configuration\n")  # shown as the run shows it
    assert not (tmp_path / "runs").exists()  # nothing left where the run made its folder


def train_into_folder_holding(tmp_path, name: str, text: str):
    """(save_dir, answer) of a run without its data root, into a folder that holds file ``name``."""
    save_dir = tmp_path / "run"
    save_dir.mkdir()
    (save_dir / name).write_text(text)
    found = train_market(tmp_path / "no-data", save_dir)
    assert found["heavy"] == []
    return save_dir, found


def test_in_an_existing_run_folder_the_refused_run_keeps_its_log_and_the_users_files(tmp_path):
    save_dir, found = train_into_folder_holding(tmp_path, "notes.txt", "mine")
    assert_one_error_line(found, "does not exist")
    (log,) = [name for name in os.listdir(save_dir) if name.startswith("train.log-")]
    assert sorted(os.listdir(save_dir)) == ["notes.txt", log] and (save_dir / "notes.txt").read_text() == "mine"
    text = (save_dir / log).read_text()
    assert text.startswith("Show configuration\n") and "DatasetLayoutError: Data root" in text


def test_a_folder_holding_another_run_is_refused_first_and_nothing_is_written(tmp_path):
    save_dir, found = train_into_folder_holding(tmp_path, "results.json", "{}")
    assert_one_error_line(found, f"data.save_dir {save_dir} already holds a run (results.json)")
    assert os.listdir(save_dir) == ["results.json"] and found["out"] == ""


def test_a_folder_another_run_holds_is_refused_first_and_nothing_is_written(tmp_path):
    from dcac_config.run_folder.run_lock import LOCK_NAME, run_lock

    save_dir = tmp_path / "run"
    save_dir.mkdir()
    with run_lock(str(save_dir)):  # held by this (live) process
        found = train_market(tmp_path / "no-data", save_dir)
        assert os.listdir(save_dir) == [LOCK_NAME]
    assert found["heavy"] == []
    assert_one_error_line(found, f"data.save_dir {save_dir} is in use by another run (pid {os.getpid()}")


def test_the_rest_of_a_layout_is_checked_by_the_run_after_the_import(tmp_path):
    """The boundary: a dataset folder that exists but lacks its parts passes the early check, and
    the run, once it has imported the model code, names what is missing."""
    root = tmp_path / "data"
    (root / "market1501").mkdir(parents=True)
    found = train_market(root, tmp_path / "run")
    assert "torch" in found["heavy"] and "dcac_plugin" in found["heavy"]
    assert_one_error_line(found, "Dataset 'market1501' is incomplete")


def test_under_torchrun_the_early_check_leaves_the_folder_to_the_run(tmp_path, monkeypatch):
    """torchrun's processes check their launch environment first, in the run."""
    from dcac_cli.answers import refuse_missing_dataset_folders
    from dcac_config.layouts import DatasetLayoutError
    from dcac_config.loading import build_config
    from dcac_config.shipped import demo_config_path

    cfg = build_config(demo_config_path("baseline"), ["data.sources", "['market1501']", "data.root",
                                                      str(tmp_path / "no-data"), "data.save_dir",
                                                      str(tmp_path / "run")])
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        refuse_missing_dataset_folders(cfg)
    monkeypatch.setenv("RANK", "0")
    refuse_missing_dataset_folders(cfg)
    assert not (tmp_path / "run").exists()
