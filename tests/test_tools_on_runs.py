"""dcac extract / export / visualize on a run of torchreid's own softmax engine and OSNet (what `dcac demo`
trains first): the feature tools work on any torchreid model, GradCAM names what it needs."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
import torchreid
from PIL import Image

from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path
from dcac_plugin.cli import main
from dcac_plugin.models import clip_vit_tiny
from dcac_plugin.tools.extract import eval_transform, load_features
from dcac_plugin.tools.visualize import ranked_results_for_run
from dcac_plugin.tools.visualize.gradcam import classifier_checkpoint
from dcac_plugin.utils.checkpoint import CheckpointError, export_encoder, load_checkpoint, model_state_dict


@pytest.fixture(scope="module")
def softmax_run(data_root, tmp_path_factory):
    """One epoch of torchreid's softmax engine on osnet_x0_25 (64 identities of synthetic_a)."""
    save_dir = str(tmp_path_factory.mktemp("softmax-run"))
    assert main(["train", "--config-file", demo_config_path("softmax"), "--root", data_root, "data.save_dir", save_dir,
                 "train.max_epoch", "1", "train.print_freq", "100"]) == 0
    return save_dir


@pytest.fixture(scope="module")
def osnet(softmax_run):
    """The run's model rebuilt by hand from its best checkpoint, in eval mode."""
    model = torchreid.models.build_model("osnet_x0_25", num_classes=64, pretrained=False)
    model.load_state_dict(model_state_dict(load_checkpoint(os.path.join(softmax_run, "model", "best.pth.tar"))))
    return model.eval()


@pytest.fixture(scope="module")
def query_images(softmax_run, data_root):
    folder = os.path.join(data_root, "synthetic_b", "query")
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))[:3]]


def test_extract_of_an_osnet_run_gives_its_eval_features_normalised(softmax_run, osnet, query_images, tmp_path,
                                                                   capsys):
    out = str(tmp_path / "features.safetensors")
    list_file = tmp_path / "images.txt"
    list_file.write_text("\n".join(query_images) + "\n")
    assert main(["extract", softmax_run, str(list_file), "--output", out, "--device", "cpu"]) == 0
    assert f"from {os.path.join(softmax_run, 'model', 'best.pth.tar')}" in capsys.readouterr().out
    features, paths = load_features(out)
    cfg = build_config(os.path.join(softmax_run, "config.yaml"))
    batch = torch.stack([eval_transform(cfg)(Image.open(path).convert("RGB")) for path in query_images])
    with torch.no_grad():
        expected = F.normalize(osnet(batch), dim=1)
    assert paths == query_images and features.shape == (3, 512)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_of_an_osnet_run_is_checked_against_pytorch(fmt, softmax_run, osnet, tmp_path, capsys):
    out = str(tmp_path / f"encoder.{fmt}")
    assert main(["export", softmax_run, "--format", fmt, "--output", out]) == 0
    printed = capsys.readouterr().out
    assert "Output: float32 [batch, 512], L2-normalised" in printed
    if fmt == "torchscript":
        x = torch.randn(2, 3, 128, 64, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            torch.testing.assert_close(torch.jit.load(out)(x), F.normalize(osnet(x), dim=1), atol=1e-5, rtol=0)
    else:
        assert "onnxruntime vs PyTorch on a batch of 3: max abs diff" in printed


def test_ranked_pictures_of_an_osnet_run(softmax_run, tmp_path):
    written = ranked_results_for_run(softmax_run, str(tmp_path / "ranked"), topk=3, max_queries=2)
    assert len(written) == 2 and all(os.path.isfile(path) for path in written)


def test_gradcam_of_an_osnet_run_names_the_model_it_needs_and_the_runs(softmax_run, query_images, tmp_path, capsys):
    code = main(["visualize", "gradcam", softmax_run, query_images[0], "--class-index", "3",
                 "--out", str(tmp_path / "cam.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines() == [
        "dcac: error: dcac visualize gradcam needs a CLIP ViT Re-ID model (model.name clip_vit_b16 or clip_vit_tiny: "
        "ViT tokens, BNNeck and ID classifier); this run trained osnet_x0_25 with engine softmax."]
    assert not (tmp_path / "cam.png").exists()


def test_gradcam_of_an_encoder_export_asks_for_a_checkpoint_with_the_classifier(tmp_path):
    path = export_encoder(clip_vit_tiny(num_classes=5), str(tmp_path / "encoder.safetensors"))
    with pytest.raises(CheckpointError, match="is a test-time encoder: GradCAM needs the ID classifier"):
        classifier_checkpoint(path)


def test_load_weights_of_an_osnet_run_evaluates_it_again_and_a_clip_run_is_told_what_it_holds(
        softmax_run, data_root, tmp_path, capsys):
    best = os.path.join(softmax_run, "model", "best.pth.tar")
    # The run folder stands for its best checkpoint (an OSNet run exports no encoder.safetensors).
    assert main(["train", "--config-file", demo_config_path("softmax"), "--root", data_root,
                 "data.save_dir", str(tmp_path / "again"), "test.evaluate", "True",
                 "model.load_weights", softmax_run]) == 0
    assert f"Loaded weights from {best}\n" in capsys.readouterr().out
    trained = json.load(open(os.path.join(softmax_run, "results.json")))["results"]["synthetic_b"]
    again = json.load(open(tmp_path / "again" / "results.json"))["results"]["synthetic_b"]
    assert again["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)
    code = main(["train", "--config-file", demo_config_path("baseline"), "--root", data_root,
                 "data.save_dir", str(tmp_path / "clip"), "test.evaluate", "True", "model.load_weights", softmax_run])
    err = capsys.readouterr().err
    assert code == 2 and "identities" not in err
    assert (f"Checkpoint {best} does not fit this run's model (ClipReID): none of its tensors outside the classifier "
            "is in the model") in err
    assert (f"It was written by a run of model.name osnet_x0_25 with data.height 128, data.width 64 "
            f"({os.path.join(softmax_run, 'config.yaml')}).") in err
