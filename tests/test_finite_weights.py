"""Weights with NaN or infinite values are refused wherever they are loaded for use (extract,
export, evaluation, ``model.load_weights``, ``model.resume``, ``load_encoder``), in one line
naming the file and the tensors; nothing is written."""
import os
import shutil

import pytest
import torch
from conftest import one_error_line
from PIL import Image
from safetensors.torch import load_file, save_file
from tree_guard import digests

import dcac_cli
from dcac_config.shipped import demo_config_path
from dcac_plugin.utils.checkpoint import CheckpointError, load_checkpoint, load_encoder, non_finite_tensors


def file_digests(folder):
    """The files under ``folder`` and their digests, logs aside: a run that stops appends its error to the log."""
    return digests(folder, ignored=(".log-",))


def dcac(*argv):
    return dcac_cli.main(list(argv))


@pytest.fixture
def poisoned_run(baseline_run, tmp_path):
    """A copy of a finished run whose encoder export has NaNs in one tensor."""
    run = tmp_path / "run"
    shutil.copytree(baseline_run, run)
    encoder = run / "encoder.safetensors"
    weights = load_file(str(encoder))
    weights["backbone.proj"][0, :3] = float("nan")
    save_file(weights, str(encoder))
    return run


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (32, 64), (120, 30, 200)).save(folder / name)
    return folder


def test_non_finite_tensors_are_named_with_their_counts_in_nested_states():
    state = {"state_dict": {"w": torch.tensor([1.0, float("nan"), float("inf"), -float("inf")]),
                            "steps": torch.tensor([3]), "fine": torch.ones(2)},
             "optimizer": {"state": {0: {"exp_avg": torch.tensor([float("nan")])}}, "param_groups": [{"lr": 0.1}]},
             "rng": [{"cpu": torch.zeros(4, dtype=torch.uint8)}], "best_rank1": -1.0}
    assert non_finite_tensors(state) == [("state_dict.w", 1, 2), ("optimizer.state.0.exp_avg", 1, 0)]


def test_extract_of_nan_weights_is_refused_naming_file_and_tensor(poisoned_run, images, tmp_path, capsys):
    before = file_digests(poisoned_run)
    out = tmp_path / "features.safetensors"
    assert dcac("extract", str(poisoned_run), str(images), "--output", str(out)) == 2
    message = one_error_line(capsys)
    assert message.startswith(f"Weights file {poisoned_run / 'encoder.safetensors'} holds NaN or infinite values in 1 "
                              "tensor: backbone.proj (3 NaN); every feature and loss computed from it would be NaN. "
                              "Use another checkpoint"), message
    assert not out.exists() and file_digests(poisoned_run) == before


def test_export_of_nan_weights_is_refused(poisoned_run, tmp_path, capsys):
    before = file_digests(poisoned_run)
    out = tmp_path / "encoder.onnx"
    assert dcac("export", str(poisoned_run), "--format", "onnx", "--output", str(out)) == 2
    assert "holds NaN or infinite values in 1 tensor: backbone.proj (3 NaN)" in one_error_line(capsys)
    assert not out.exists() and file_digests(poisoned_run) == before


def test_evaluation_of_nan_weights_is_refused_and_leaves_no_folder(poisoned_run, data_root, tmp_path, capsys):
    before = file_digests(poisoned_run)
    evaluation = tmp_path / "eval"
    assert dcac("train", "--config-file", demo_config_path("baseline"), "--root", data_root, "data.save_dir",
                str(evaluation), "test.evaluate", "True", "model.load_weights", str(poisoned_run)) == 2
    assert "encoder.safetensors holds NaN or infinite values in 1 tensor: backbone.proj" in one_error_line(capsys)
    assert not evaluation.exists() and file_digests(poisoned_run) == before


def test_load_weights_names_the_first_tensors_and_counts_the_rest(baseline_run, data_root, tmp_path, capsys):
    state = load_checkpoint(os.path.join(baseline_run, "model", "latest.pth.tar"))
    names = [name for name, value in state["state_dict"].items() if value.is_floating_point()][:5]
    for name in names:
        state["state_dict"][name].view(-1)[0] = float("inf")
    path = tmp_path / "infinite.pth.tar"
    torch.save(state, path)
    assert dcac("train", "--config-file", demo_config_path("baseline"), "--root", data_root, "data.save_dir",
                str(tmp_path / "new"), "model.load_weights", str(path)) == 2
    message = one_error_line(capsys)
    shown = ", ".join(f"{name} (1 infinite)" for name in names[:3])
    assert f"Weights file {path} holds NaN or infinite values in 5 tensors: {shown} and 2 more;" in message
    assert not (tmp_path / "new").exists()


def test_resume_checks_the_whole_training_state(baseline_run, data_root, tmp_path, capsys):
    """NaNs in the optimizer's moments would turn the first resumed step's weights into NaN."""
    run = tmp_path / "run"
    shutil.copytree(baseline_run, run)
    latest = run / "model" / "latest.pth.tar"
    state = load_checkpoint(str(latest))
    first = next(iter(state["optimizer"]["state"]))
    moment = next(key for key, value in state["optimizer"]["state"][first].items()
                  if torch.is_tensor(value) and value.is_floating_point() and value.dim() > 0)
    state["optimizer"]["state"][first][moment].view(-1)[0] = float("nan")
    torch.save(state, latest)
    before = file_digests(run)
    assert dcac("train", "--config-file", demo_config_path("baseline"), "--root", data_root, "data.save_dir", str(run),
                "model.resume", str(run), "train.max_epoch", "2") == 2
    assert (f"Weights file {latest} holds NaN or infinite values in 1 tensor: optimizer.state.{first}.{moment} (1 NaN)"
            in one_error_line(capsys))
    assert file_digests(run) == before


def test_load_encoder_refuses_nan_weights(poisoned_run):
    from torchreid import models

    model = models.build_model("clip_vit_tiny", num_classes=4, loss="reid", pretrained=False)
    with pytest.raises(CheckpointError, match=r"holds NaN or infinite values in 1 tensor: backbone\.proj \(3 NaN\)"):
        load_encoder(model, str(poisoned_run / "encoder.safetensors"))
