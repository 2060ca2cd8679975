"""Feature extraction and encoder export from a run directory, on a tiny untrained model."""
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchreid
from PIL import Image

from dcac_cli import build_parser
from dcac_cli.dispatch import command_handler
from dcac_config.loading import build_config
from dcac_plugin.tools.export import export_onnx, export_torchscript, verify_onnx
from dcac_plugin.tools.extract import eval_transform, extract_features, load_features
from dcac_plugin.utils.checkpoint import CheckpointError, export_encoder

CONFIG = os.path.join(os.path.dirname(__file__), "..", "dcac_config", "configs", "demo_baseline.yaml")
HEIGHT, WIDTH, DIM = 128, 64, 64  # demo_baseline's input size; clip_vit_tiny's feature width


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run directory as training leaves it: config.yaml + encoder.safetensors, the model in it, its config),
    without training."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = torchreid.models.build_model("clip_vit_tiny", num_classes=5, loss="softmax", pretrained=False)
    # Trained-like BNNeck statistics: a run loaded without them would give other features.
    model.bnneck.running_mean.uniform_(-0.5, 0.5)
    model.bnneck.running_var.uniform_(0.5, 2.0)
    export_encoder(model, str(run / "encoder.safetensors"))
    cfg = build_config(CONFIG)
    (run / "config.yaml").write_text(cfg.dump())
    return str(run), model.eval(), cfg


@pytest.fixture(scope="module")
def run_dir(trained):
    return trained[0]


@pytest.fixture(scope="module")
def loaded(trained):
    return trained[1], trained[2]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five random 40x20 JPEGs, names out of order so that sorting is visible."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("c.jpg", "a.jpg", "e.jpg", "b.jpg", "d.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(folder / name)
    return str(folder)


def run_command(argv):
    """``dcac ARGV`` in-process, its errors raised rather than reported."""
    args = build_parser().parse_args(argv)
    return command_handler(args)(args)


def direct_features(model, cfg, folder, names):
    batch = torch.stack([eval_transform(cfg)(Image.open(os.path.join(folder, n)).convert("RGB")) for n in names])
    with torch.no_grad():
        return batch, model(batch), model(torch.flip(batch, dims=[3]))


def test_extract_command_matches_model(run_dir, images, loaded, tmp_path):
    out = str(tmp_path / "feats.safetensors")
    assert run_command(["extract", run_dir, images, "--output", out, "--batch-size", "2", "--device", "cpu"]) == 0
    features, paths = load_features(out)
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    assert [os.path.basename(p) for p in paths] == names
    assert features.shape == (5, DIM)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(5), atol=1e-5, rtol=0)
    model, cfg = loaded
    _, expected, _ = direct_features(model, cfg, images, names)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
    # Distinct images give distinct features: the rows are not a broadcast of one image.
    assert (features[0] - features[1]).abs().max() > 1e-3


def test_flip_averages_image_and_mirror(images, loaded):
    model, cfg = loaded
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    paths = [os.path.join(images, n) for n in names]
    plain = extract_features(model, paths, eval_transform(cfg), batch_size=3)
    flipped = extract_features(model, paths, eval_transform(cfg), batch_size=3, flip=True)
    _, direct, mirror = direct_features(model, cfg, images, names)
    torch.testing.assert_close(flipped, F.normalize(direct + mirror, dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flipped.norm(dim=1), torch.ones(5), atol=1e-5, rtol=0)
    assert (flipped - plain).abs().max() > 1e-3


def test_onnx_dynamic_batch_matches_pytorch(loaded, tmp_path):
    import onnx
    import onnxruntime

    model, _ = loaded
    path = export_onnx(model, str(tmp_path / "encoder.onnx"), HEIGHT, WIDTH)
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["features"]
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(batch))
        (out,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            expected = model(x)
        assert out.shape == (batch, DIM)
        np.testing.assert_allclose(out, expected.numpy(), atol=1e-4, rtol=0)
    assert verify_onnx(path, model, torch.randn(3, 3, HEIGHT, WIDTH)) < 1e-4


def test_onnx_command_reports_check_and_preprocessing(run_dir, loaded, tmp_path, capsys):
    out = str(tmp_path / "cmd.onnx")
    assert run_command(["export", run_dir, "--format", "onnx", "--output", out]) == 0
    printed = capsys.readouterr().out
    assert os.path.isfile(out) and out in printed
    assert "max abs diff" in printed and f"[batch, 3, {HEIGHT}, {WIDTH}]" in printed and f"[batch, {DIM}]" in printed
    cfg = loaded[1]
    assert f"mean {list(cfg.data.norm_mean)} and std {list(cfg.data.norm_std)}" in printed


def test_torchscript_reloads_and_matches(loaded, run_dir, tmp_path):
    model, _ = loaded
    path = export_torchscript(model, str(tmp_path / "encoder.pt"), HEIGHT, WIDTH)
    scripted = torch.jit.load(path)
    x = torch.randn(3, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-5, rtol=0)
    assert scripted(x).shape == (3, DIM)
    # The command's default output lands in the run directory.
    assert run_command(["export", run_dir, "--format", "torchscript"]) == 0
    assert os.path.isfile(os.path.join(run_dir, "encoder.torchscript.pt"))


def test_missing_run_dir_is_a_clear_error(images, tmp_path):
    missing = str(tmp_path / "no-such-run")
    with pytest.raises(CheckpointError, match="No run directory or checkpoint at .*no-such-run"):
        run_command(["extract", missing, images, "--device", "cpu"])
    with pytest.raises(CheckpointError, match="No run directory or checkpoint"):
        run_command(["export", missing, "--format", "onnx"])


def test_export_describes_the_test_time_resize(trained, tmp_path, capsys):
    run, _, cfg = trained
    assert cfg.dcac.test_resize_interpolation == "" and cfg.dcac.resize_interpolation == "bicubic"
    bilinear_run = tmp_path / "bilinear-run"
    bilinear_run.mkdir()
    shutil.copy(os.path.join(run, "encoder.safetensors"), bilinear_run)
    tested_bilinearly = cfg.clone()
    tested_bilinearly.dcac.test_resize_interpolation = "bilinear"
    (bilinear_run / "config.yaml").write_text(tested_bilinearly.dump())
    for folder, resize in ((run, "bicubic"), (str(bilinear_run), "bilinear")):
        output = str(tmp_path / f"{resize}.pt")
        assert run_command(["export", folder, "--format", "torchscript", "--output", output]) == 0
        assert f"resize ({resize}) to {HEIGHT}x{WIDTH}" in capsys.readouterr().out
