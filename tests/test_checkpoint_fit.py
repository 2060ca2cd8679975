"""model.load_weights and model.resume say exactly what differs between a checkpoint and the run's model.

Tiny models built here, no training: a message names the identity counts when only the classifier
differs, the differing tensors when the architecture does, and never what matches.
"""
import os

import pytest
import torch
import torchreid

from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path
from dcac_plugin.models import clip_vit_tiny
from dcac_plugin.utils.checkpoint import (CheckpointError, atomic_save, check_resumable, export_encoder, find_weights,
                                          load_checkpoint, load_model_weights, model_state_dict)


def clip_tiny(num_classes, img_size=(128, 64), seed=0):
    torch.manual_seed(seed)
    return clip_vit_tiny(num_classes=num_classes, pretrained=False, img_size=img_size)


def saved(model, path):
    """``model``'s weights as one of our checkpoints at ``path``."""
    atomic_save({"state_dict": model.state_dict(), "epoch": 1}, str(path))
    return str(path)


def encoder_of(model, name):
    return {k: v for k, v in model.state_dict().items() if k.startswith(name)}


def test_other_identities_skip_the_classifier_and_say_both_counts(tmp_path):
    trained = clip_tiny(5)
    path = saved(trained, tmp_path / "five.pth.tar")
    model = clip_tiny(7, seed=1)
    fresh_classifier = model.classifier.weight.clone()
    line = load_model_weights(model, path)
    assert line == (f"Loaded weights from {path}: its classifier was trained on 5 identities and this run has 7: "
                    "the classifier is skipped and starts fresh (evaluation uses the encoder only)")
    for key, value in encoder_of(trained, "backbone.").items():
        assert torch.equal(model.state_dict()[key], value)
    assert torch.equal(model.classifier.weight, fresh_classifier)


def test_same_identities_load_everything_and_say_nothing_more(tmp_path):
    trained = clip_tiny(5)
    path = saved(trained, tmp_path / "five.pth.tar")
    model = clip_tiny(5, seed=1)
    assert load_model_weights(model, path) == f"Loaded weights from {path}"
    assert torch.equal(model.classifier.weight, trained.classifier.weight)


def test_an_encoder_export_loads_and_says_it_has_no_classifier(tmp_path):
    trained = clip_tiny(5)
    path = export_encoder(trained, str(tmp_path / "encoder.safetensors"))
    model = clip_tiny(7, seed=1)
    line = load_model_weights(model, path)
    assert line == (f"Loaded weights from {path}: it holds no classifier (a test-time encoder): the classifier "
                    "starts fresh (evaluation uses the encoder only)")
    for key, value in encoder_of(trained, "bnneck.").items():
        assert torch.equal(model.state_dict()[key], value)


def test_a_run_folder_stands_for_its_encoder_then_best_then_latest(tmp_path):
    run = tmp_path / "run"
    latest = saved(clip_tiny(5), run / "model" / "latest.pth.tar")
    assert find_weights(str(run)) == latest
    best = saved(clip_tiny(5), run / "model" / "best.pth.tar")
    assert find_weights(str(run)) == best
    encoder = export_encoder(clip_tiny(5), str(run / "encoder.safetensors"))
    assert find_weights(str(run)) == encoder
    assert load_model_weights(clip_tiny(5), str(run)).startswith(f"Loaded weights from {encoder}: it holds no classifier")


def test_another_architecture_is_named_with_the_run_that_wrote_it_and_no_identity_count(tmp_path):
    run = tmp_path / "osnet-run"
    path = saved(torchreid.models.build_model("osnet_x0_25", num_classes=5, pretrained=False),
                 run / "model" / "best.pth.tar")
    (run / "config.yaml").write_text(build_config(demo_config_path("softmax")).dump())
    with pytest.raises(CheckpointError) as info:
        load_model_weights(clip_tiny(5), path)
    message = str(info.value)
    assert message.startswith(f"Checkpoint {path} does not fit this run's model (ClipReID): none of its tensors "
                              "outside the classifier is in the model (its: conv1.conv.weight, ")
    assert "so it holds another architecture" in message
    assert (f"It was written by a run of model.name osnet_x0_25 with data.height 128, data.width 64 "
            f"({run / 'config.yaml'}).") in message
    assert "identities" not in message
    # Resuming says the same, not that the identities differ.
    weights = model_state_dict(load_checkpoint(path))
    with pytest.raises(CheckpointError, match="holds another architecture") as info:
        check_resumable(clip_tiny(7), weights, path)
    assert "identities" not in str(info.value)


def test_another_input_size_names_only_the_tensor_whose_shape_differs(tmp_path):
    path = saved(clip_tiny(5, img_size=(256, 128)), tmp_path / "large.pth.tar")
    with pytest.raises(CheckpointError) as info:
        load_model_weights(clip_tiny(7), path)
    message = str(info.value)
    assert message == (f"Checkpoint {path} does not fit this run's model (ClipReID): backbone.positional_embedding "
                       "is [129, 64] in the checkpoint and [33, 64] in the model. Load weights of a run with this "
                       "run's model.name and data.height/width, or set those to the ones of the run that wrote it.")


def test_tensors_only_one_side_has_are_counted_each_way(tmp_path):
    weights = clip_tiny(5).state_dict()
    weights["extra.scale"] = torch.ones(1)
    del weights["bnneck.bias"]
    path = tmp_path / "edited.pth"
    torch.save(weights, path)
    with pytest.raises(CheckpointError) as info:
        load_model_weights(clip_tiny(5), str(path))
    assert (": 1 of its tensors are not in the model (extra.scale); 1 of the model's tensors are not in it "
            "(bnneck.bias). ") in str(info.value)
    assert " is [" not in str(info.value)  # no shape differs, so none is listed


def test_resume_on_other_identities_says_both_counts_and_that_the_rest_matches(tmp_path):
    path = saved(clip_tiny(5), tmp_path / "latest.pth.tar")
    with pytest.raises(CheckpointError) as info:
        check_resumable(clip_tiny(7), model_state_dict(load_checkpoint(path)), path)
    assert str(info.value) == (
        f"Checkpoint {path} was trained on 5 identities; this run has 7 (the identities of its data.sources), and "
        "the rest of the model matches. model.resume continues the same training only. To start from its encoder "
        "alone (classifier, PCL memory and prompts fresh), use model.load_weights with this file instead.")
    check_resumable(clip_tiny(5), model_state_dict(load_checkpoint(path)), path)  # the same model: no error


def test_a_corrupt_encoder_export_is_named(tmp_path):
    path = tmp_path / "encoder.safetensors"
    export_encoder(clip_tiny(5), str(path))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=f"Checkpoint {path} is corrupt or truncated"):
        load_model_weights(clip_tiny(5), str(path))


def test_a_missing_path_is_neither_file_nor_run(tmp_path):
    missing = os.path.join(tmp_path, "absent.pth")
    with pytest.raises(CheckpointError, match=f"Checkpoint not found: {missing} is neither a checkpoint file nor"):
        load_model_weights(clip_tiny(5), missing)
