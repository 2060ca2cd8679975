import pytest
import torch
import torch.nn.functional as F
from torchreid import models, utils

from dcac_plugin.models.clip_reid import (ClipReID, ClipWeightsError, ReIDOutput, build_clip_visual,
                                          interpolate_positional_embedding)


def test_factory_builds_real_size_model_with_paper_parameter_count():
    model = models.build_model("clip_vit_b16", num_classes=751, loss="softmax", pretrained=False)
    assert isinstance(model, ClipReID)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # Paper Table 6: the baseline trains 85.94 M parameters (Market1501, 751 identities).
    assert round(trainable / 1e6, 2) == 85.94
    assert model.backbone.grid_size == (16, 8)
    assert model.backbone.positional_embedding.shape == (16 * 8 + 1, 768)
    # OpenAI CLIP visual key names.
    keys = set(model.backbone.state_dict())
    assert {"conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_post.weight",
            "proj", "transformer.resblocks.11.attn.in_proj_weight"} <= keys


def test_quick_gelu_is_used():
    visual = build_clip_visual("tiny", (128, 64))
    assert type(visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


@pytest.mark.parametrize("loss", ["softmax", "triplet", "reid"])
def test_train_and_eval_outputs(loss):
    model = models.build_model("clip_vit_tiny", num_classes=7, loss=loss, pretrained=False)
    x = torch.randn(4, 3, 128, 64)
    out = model.train()(x)
    if loss == "softmax":
        assert out.shape == (4, 7)
    elif loss == "triplet":
        logits, z = out
        assert logits.shape == (4, 7) and z.shape == (4, 64)
    else:
        assert isinstance(out, ReIDOutput)
        assert out.logits.shape == (4, 7) and out.z.shape == (4, 64) and out.f_bn.shape == (4, 64)
        # logits come from the BN feature through the bias-free classifier
        torch.testing.assert_close(out.logits, out.f_bn @ model.classifier.weight.t())
    with torch.no_grad():
        feats = model.eval()(x)
    assert feats.shape == (4, 64)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(4))
    with torch.no_grad():
        expected = F.normalize(model.bnneck(model.backbone(x)), dim=1)
    torch.testing.assert_close(feats, expected)


def test_interpolation_keeps_cls_and_resizes_grid():
    rows = torch.arange(14.0).view(14, 1, 1).expand(14, 14, 3)
    cols = torch.arange(14.0).view(1, 14, 1).expand(14, 14, 3)
    pos = torch.cat([torch.full((1, 6), -7.0), torch.cat([rows, cols], dim=2).reshape(196, 6)])
    out = interpolate_positional_embedding(pos, (16, 8))
    assert out.shape == (129, 6)
    assert torch.equal(out[0], pos[0])
    grid = out[1:].view(16, 8, 6)
    # rows: independent of column, increasing down the image; cols: independent of row, increasing right
    assert torch.allclose(grid[:, :, 0], grid[:, :1, 0].expand(16, 8))
    assert (grid[1:, 0, 0] > grid[:-1, 0, 0]).all()
    assert torch.allclose(grid[:, :, 3], grid[:1, :, 3].expand(16, 8))
    assert (grid[0, 1:, 3] > grid[0, :-1, 3]).all()
    # the resized grid spans the same range as the original
    assert grid[:, :, 0].min() >= 0 and grid[:, :, 0].max() <= 13


def test_clip_state_dict_224_loads_onto_256x128(tmp_path):
    """A full CLIP state dict at 224x224 (14x14 grid) fills a 256x128 model (16x8 grid)."""
    from dcac_plugin.models.clip_reid import build_clip_reid

    source = build_clip_visual("tiny", (224, 224))
    full_clip = {f"visual.{k}": v for k, v in source.state_dict().items()}
    full_clip["token_embedding.weight"] = torch.zeros(10, 4)  # text-tower keys are ignored
    path = tmp_path / "tiny_clip.pt"
    torch.save(full_clip, path)
    model = build_clip_reid("tiny", 5, pretrained=True, weights=str(path), img_size=(256, 128))
    target = model.backbone.state_dict()
    source_pos = source.positional_embedding.detach()
    assert target["positional_embedding"].shape == (16 * 8 + 1, 64)
    assert torch.equal(target["positional_embedding"][0], source_pos[0])
    assert torch.equal(target["positional_embedding"], interpolate_positional_embedding(source_pos, (16, 8)))
    for key, value in source.state_dict().items():
        if key != "positional_embedding":
            assert torch.equal(target[key], value), key
    # and the torchreid factory takes a file path as `pretrained` too
    small = models.build_model("clip_vit_tiny", num_classes=5, loss="softmax", pretrained=str(path))
    assert torch.equal(small.backbone.class_embedding.detach(), source.class_embedding.detach())


def test_missing_weights_offline_give_clear_error(tmp_path):
    with pytest.raises(ClipWeightsError, match="dcac.clip_weights"):
        models.build_model("clip_vit_tiny", num_classes=3, loss="softmax", pretrained=str(tmp_path / "nope.pt"))


def test_patch_projection_frozen_and_bnneck_bias_fixed_through_torchreid_training_step():
    model = models.build_model("clip_vit_tiny", num_classes=4, loss="softmax", pretrained=False)
    names = {n for n, _ in model.named_parameters()}
    assert "backbone.conv1.weight" not in names and "bnneck.bias" not in names
    assert "backbone.conv1.weight" in model.state_dict() and "bnneck.bias" in model.state_dict()
    # torchreid's engine calls open_all_layers every epoch: it must not unfreeze them.
    utils.open_all_layers(model)
    conv_before = model.backbone.conv1.weight.clone()
    block_before = model.backbone.transformer.resblocks[0].mlp.c_fc.weight.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=1e-4)
    loss = F.cross_entropy(model(torch.randn(8, 3, 128, 64)), torch.arange(8) % 4)
    loss.backward()
    optimizer.step()
    assert torch.equal(model.backbone.conv1.weight, conv_before)
    assert torch.equal(model.bnneck.bias, torch.zeros(64))
    assert not torch.equal(model.bnneck.weight.detach(), torch.ones(64))  # the BN weight does train
    assert not torch.equal(model.backbone.transformer.resblocks[0].mlp.c_fc.weight.detach(), block_before)


def test_classifier_init_and_bias_free():
    model = models.build_model("clip_vit_b16", num_classes=1000, loss="softmax", pretrained=False)
    assert model.classifier.bias is None
    assert abs(float(model.classifier.weight.detach().std()) - 0.001) < 0.00005
    assert torch.equal(model.bnneck.weight.detach(), torch.ones(512))
