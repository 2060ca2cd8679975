"""dcac_plugin.tools.visualize on a tiny run made without training, and test-time re-ranking."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
import torchreid
from PIL import Image
from torchreid import utils

from dcac_cli import build_parser
from dcac_config.errors import UsageError
from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path
from dcac_plugin.cli import main
from dcac_plugin.evaluation import torchreid_ranking_note
from dcac_plugin.tools.visualize import (gradcam, overlay, plot_training_curves, ranked_results_for_run, read_scalars,
                                         save_gradcam_grid, save_ranked_results)
from dcac_plugin.tools.visualize.cli import cmd_visualize
from dcac_plugin.tools.visualize.curves import DPI, FIGSIZE, evaluation_points
from dcac_plugin.utils.checkpoint import atomic_save, export_encoder


@pytest.fixture(scope="module")
def tiny_run(data_root, tmp_path_factory):
    """A run directory as training leaves it (config, encoder, checkpoint), from a random-init model."""
    run = tmp_path_factory.mktemp("tiny-run")
    torch.manual_seed(0)
    model = torchreid.models.build_model("clip_vit_tiny", num_classes=64, loss="softmax", pretrained=False)
    # Spread the near-zero initial classifier so that logits (and their gradients) differ per class.
    torch.nn.init.normal_(model.classifier.weight, std=1.0)
    export_encoder(model, str(run / "encoder.safetensors"))
    atomic_save({"state_dict": model.state_dict(), "epoch": 1}, str(run / "model" / "latest.pth.tar"))
    cfg = build_config(demo_config_path("baseline"), ["data.root", data_root])
    (run / "config.yaml").write_text(cfg.dump())
    return str(run)


@pytest.fixture(scope="module")
def test_images(tiny_run):
    from dcac_plugin.run.launcher import build_datamanager

    cfg = build_config(osp.join(tiny_run, "config.yaml"))
    return [item[0] for item in build_datamanager(cfg, use_gpu=False).test_dataset["synthetic_b"]["query"][:2]]


# ------------------------------------------------------------------- curves

def _write_events(run, scalars):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(run)
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


def test_curves_read_back_and_plot(tmp_path):
    scalars = {
        "Train/loss_id": [(0, 4.0), (1, 3.5), (2, 3.0)],
        "Train/loss_pcl": [(0, 2.0), (1, 1.75), (2, 1.5)],
        "Train/lr": [(0, 0.001), (1, 0.001), (2, 0.0001)],
        "Test/synthetic_b/mAP": [(1, 0.25), (2, 0.5)],
    }
    _write_events(str(tmp_path), scalars)
    read = read_scalars(str(tmp_path))
    assert set(read) == set(scalars)
    for tag, points in scalars.items():
        assert [s for s, _ in read[tag]] == [s for s, _ in points]
        assert [v for _, v in read[tag]] == pytest.approx([v for _, v in points])  # stored as float32
    written = plot_training_curves(str(tmp_path), str(tmp_path / "plots"))
    assert [osp.basename(p) for p in written] == ["losses.png", "lr.png", "evaluation.png"]
    for path in written:
        with Image.open(path) as picture:
            assert picture.size == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))


def test_evaluation_points_drop_torchreids_copies():
    # Ours at the 1-based epoch, then torchreid's test() copy at the 0-based one.
    assert evaluation_points([(1, 0.2), (0, 0.2), (2, 0.3), (1, 0.3)]) == [(1, 0.2), (2, 0.3)]


def test_curves_without_event_file_fail_clearly(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="events.out.tfevents"):
        read_scalars(str(tmp_path))
    with pytest.raises(UsageError, match="events.out.tfevents"):
        cmd_visualize(_parse(["curves", str(tmp_path)]))
    assert main(["visualize", "curves", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("dcac: error: No TensorBoard")


def _parse(argv):
    return build_parser().parse_args(["visualize"] + argv)


# ------------------------------------------------------------------- gradcam

def test_gradcam_map_is_normalised_and_depends_on_the_class():
    torch.manual_seed(0)
    model = torchreid.models.build_model("clip_vit_tiny", num_classes=8, loss="softmax", pretrained=False)
    torch.nn.init.normal_(model.classifier.weight, std=1.0)
    model.train()
    image = torch.randn(1, 3, 128, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cam = gradcam(model, image, 3)
    assert cam.shape == (128, 64)
    assert cam.min() == 0.0 and cam.max() == pytest.approx(1.0)
    assert cam.std() > 0.01
    assert np.abs(gradcam(model, image, 5) - cam).max() > 0.05
    # The model is left as it was: mode, running statistics, no gradients on the weights.
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="outside"):
        gradcam(model, image, 8)
    blended = overlay(np.zeros((128, 64, 3), np.uint8), cam)
    assert blended.shape == (128, 64, 3) and blended.dtype == np.uint8


def test_gradcam_grid_of_a_run(tiny_run, test_images, tmp_path):
    out = save_gradcam_grid(tiny_run, test_images, 27, str(tmp_path / "cam.png"))
    with Image.open(out) as picture:
        assert picture.size == (2 * 64, 2 * 128)  # per image: the picture and its map, at the model's input size
    args = _parse(["gradcam", tiny_run, *test_images, "--class-index", "28"])
    assert cmd_visualize(args) == 0
    assert osp.isfile(osp.join(tiny_run, "visualize", "gradcam_28.png"))


# ------------------------------------------------------------------- ranked

def test_ranked_results_of_a_run(tiny_run, tmp_path):
    small = ranked_results_for_run(tiny_run, str(tmp_path / "top3"), topk=3, max_queries=4)
    large = ranked_results_for_run(tiny_run, str(tmp_path / "top6"), dataset="synthetic_b", topk=6, max_queries=4)
    assert len(small) == len(large) == 4
    widths = []
    for paths in (small, large):
        with Image.open(paths[0]) as picture:
            assert picture.size[1] == 128
            widths.append(picture.size[0])
        assert all(osp.isfile(p) for p in paths)
    assert widths[1] > widths[0]


def test_save_ranked_results_caps_at_the_number_of_queries(tiny_run, test_images, tmp_path):
    query = [(path, i, 0) for i, path in enumerate(test_images)]
    gallery = [(path, i, 1) for i, path in enumerate(test_images)]
    written = save_ranked_results(np.array([[0.0, 1.0], [1.0, 0.0]]), query, gallery, str(tmp_path), topk=2,
                                  max_queries=20, width=64, height=128)
    assert len(written) == 2 and all(osp.isfile(p) for p in written)


# ------------------------------------------------------------------- re-ranking

def test_rerank_is_applied_by_the_engines(tiny_run, data_root, tmp_path, capsys):
    def evaluate(rerank):
        save_dir = tmp_path / f"rerank-{rerank}"
        code = main(["train", "--config-file", demo_config_path("baseline"), "--root", data_root,
                     "data.save_dir", str(save_dir), "test.evaluate", "True",
                     "model.load_weights", osp.join(tiny_run, "model", "latest.pth.tar"), "test.rerank", str(rerank)])
        assert code == 0
        return json.load(open(save_dir / "results.json"))["results"]["synthetic_b"], capsys.readouterr().out

    (plain, plain_log), (reranked, reranked_log) = evaluate(False), evaluate(True)
    # Only the run that ranks with torchreid's own code says how fast that code is here.
    note = torchreid_ranking_note()
    assert note is None or (note in reranked_log and note not in plain_log)
    for metrics in (plain, reranked):
        # A random-init model: Rank-1 may well be 0, mAP is not.
        assert 0 < metrics["mAP"] <= 1 and 0 <= metrics["rank1"] <= 1
    assert plain["mAP"] != pytest.approx(reranked["mAP"], abs=1e-6)
    assert "mINP" not in reranked  # torchreid's pipeline ranked it, not ours
    assert reranked["mAP"] == pytest.approx(_reranked_by_hand(tiny_run), abs=1e-6)


def _reranked_by_hand(run):
    """mAP of the run's model on synthetic_b with torchreid's k-reciprocal re-ranking, step by step."""
    from dcac_plugin.run.launcher import build_datamanager
    from dcac_plugin.tools.inference import load_trained_model

    model, cfg, _ = load_trained_model(osp.join(run, "model", "latest.pth.tar"))
    loaders = build_datamanager(cfg, use_gpu=False).test_loader["synthetic_b"]
    split = {}
    with torch.no_grad():
        for name in ("query", "gallery"):
            batches = list(loaders[name])
            split[name] = (torch.cat([model(b["img"]) for b in batches]),
                           torch.cat([b["pid"] for b in batches]).numpy(),
                           torch.cat([b["camid"] for b in batches]).numpy())
    (qf, q_pids, q_cams), (gf, g_pids, g_cams) = split["query"], split["gallery"]
    distance = torchreid.metrics.compute_distance_matrix
    distmat = utils.re_ranking(distance(qf, gf).numpy(), distance(qf, qf).numpy(), distance(gf, gf).numpy())
    # torchreid's default path, as its engine calls it for test.rerank (Cython where it is built).
    _, mAP = torchreid.metrics.evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams)
    return float(mAP)
