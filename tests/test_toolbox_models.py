"""Engines baseline and dcac on torchreid's own models (OSNet, ResNet): the paper's Re-ID head on
the model's feature, the diffusion feedback reaching the backbone, checkpoints, runs, stats,
and the toolbox configs against torchreid's published recipes.

``fixtures/torchreid_configs/`` are verbatim copies of deep-person-reid 1.4.0's
``configs/*.yaml`` (commit f8cd150fdf77e8d9e1ed143b7f308c2c609ded50).
"""
import json
import os

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torchreid import models

from dcac_config.generators.protocols import SINGLE_SOURCE_PAIRS
from dcac_config.generators.rendering import PAPER_CONFIG_DIR
from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path
from dcac_plugin.cli import main
from dcac_plugin.diffusion import save_tiny_stable_diffusion
from dcac_plugin.engines.dcac import build_diffusion_feedback
from dcac_plugin.models import ReIDOutput, ToolboxReID, build_toolbox_reid
from dcac_plugin.run.launcher import check_config, prepare
from dcac_plugin.speed.performance import resolve_amp
from dcac_plugin.tools.inference import load_trained_model
from dcac_plugin.utils.checkpoint import load_checkpoint, load_encoder
from dcac_plugin.utils.toolbox_tables import model_factory

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "torchreid_configs")
TINY_RESNET_FEATURE = 96  # its fc layer: a feature dimension no other test model has


def tiny_resnet(num_classes, loss="softmax", pretrained=False, **kwargs):
    """torchreid's own ResNet class, one BasicBlock per stage and an fc layer to a 96-d feature."""
    return models.resnet.ResNet(num_classes, loss, block=models.resnet.BasicBlock, layers=[1, 1, 1, 1],
                                fc_dims=[TINY_RESNET_FEATURE], **kwargs)


@pytest.fixture(autouse=True)
def resnet_tiny_in_factory(monkeypatch):
    monkeypatch.setitem(model_factory(), "resnet_tiny", tiny_resnet)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return save_tiny_stable_diffusion(str(tmp_path_factory.mktemp("sd") / "tiny-sd"))


MODELS = {"osnet_x0_25": 512, "resnet_tiny": TINY_RESNET_FEATURE}  # name: the model's own feature dimension
FIRST_CONV = {"osnet_x0_25": "backbone.conv1.conv.weight", "resnet_tiny": "backbone.conv1.weight"}


def build(name, num_classes=6, loss="reid"):
    torch.manual_seed(0)
    return build_toolbox_reid(name, num_classes, loss, pretrained=False)


# ----------------------------------------------------------------------- the head

@pytest.mark.parametrize("name", sorted(MODELS))
def test_head_on_the_models_feature_in_every_convention(name):
    model = build(name)
    assert model.feature_dim == MODELS[name]
    assert isinstance(model.backbone.classifier, torch.nn.Identity)
    assert model.classifier.bias is None and model.classifier.weight.shape == (6, MODELS[name])
    images = torch.randn(4, 3, 64, 32)
    out = model.train()(images)
    assert isinstance(out, ReIDOutput)
    assert out.z.shape == out.f_bn.shape == (4, MODELS[name]) and out.logits.shape == (4, 6)
    torch.testing.assert_close(out.logits, model.classifier(out.f_bn))
    model.loss = "softmax"
    assert model(images).shape == (4, 6)
    model.loss = "triplet"
    logits, z = model(images)
    assert logits.shape == (4, 6) and z.shape == (4, MODELS[name])
    with torch.no_grad():
        features = model.eval()(images)
        # eval mode: the backbone's eval feature through the BNNeck's running statistics, L2-normalised
        expected = F.normalize(model.bnneck(model.backbone(images)), dim=1)
    assert features.shape == (4, MODELS[name])
    torch.testing.assert_close(features.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(features, expected)


@pytest.mark.parametrize("name, dim", [("osnet_ain_x1_0", 512), ("osnet_x1_0", 512), ("resnet50", 2048)])
def test_feature_dimension_comes_from_the_real_size_model(name, dim):
    with torch.device("meta"):
        model = build_toolbox_reid(name, 751, "reid", pretrained=False)
    assert model.feature_dim == dim and model.classifier.weight.shape == (751, dim)


def test_torchreid_engines_still_get_the_model_as_torchreid_builds_it():
    from dcac_plugin.run.launcher import build_model

    cfg = build_config(demo_config_path("softmax"), [])
    model = build_model(cfg, 6, "softmax", use_gpu=False)
    assert not isinstance(model, ToolboxReID) and isinstance(model.classifier, torch.nn.Linear)
    assert model.train()(torch.randn(2, 3, 64, 32)).shape == (2, 6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_diffusion_loss_alone_reaches_the_backbone(name, tiny_sd):
    model = build(name)
    cfg = build_config(demo_config_path("dcac_osnet"), ["dcac.diffusion.pretrained", tiny_sd])
    feedback = build_diffusion_feedback(cfg, 6, model.feature_dim)
    out = model.train()(torch.randn(4, 3, 64, 32))
    loss_dif = feedback(torch.rand(4, 3, 64, 64) * 2 - 1, out.logits, out.f_bn, torch.tensor([0, 1, 2, 3]))
    loss_dif.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads[FIRST_CONV[name]] is not None and grads[FIRST_CONV[name]].abs().sum() > 0
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    backbone = [n for n in grads if n.startswith("backbone.")]
    assert sum(grads[n].abs().sum() > 0 for n in backbone) >= 0.9 * len(backbone)
    assert feedback.condition.prompts.grad.abs().sum() > 0


# ------------------------------------------------------------------ runs

@pytest.mark.parametrize("name", sorted(MODELS))
def test_two_epoch_dcac_run_checkpoint_and_encoder_round_trip(name, data_root, tmp_path, tiny_sd):
    save_dir = str(tmp_path / "run")
    opts = ["model.name", name, "data.height", "64", "data.width", "32", "dcac.diffusion.pretrained", tiny_sd,
            "train.max_epoch", "2", "train.print_freq", "100"]
    assert main(["train", "--config-file", demo_config_path("dcac_osnet"), "--root", data_root,
                 "data.save_dir", save_dir, *opts]) == 0
    results = json.load(open(os.path.join(save_dir, "results.json")))
    assert results["model"] == name and 0 < results["results"]["synthetic_b"]["mAP"] <= 1
    log = open([os.path.join(save_dir, f) for f in os.listdir(save_dir) if f.startswith("train.log")][0]).read()
    assert f"Re-ID model: torchreid's {name}, random initialisation (model.pretrained False); BNNeck and " \
           f"bias-free classifier on its {MODELS[name]}-d feature" in log
    latest = os.path.join(save_dir, "model", "latest.pth.tar")
    state = load_checkpoint(latest)
    assert state["epoch"] == 2
    cfg = build_config(demo_config_path("dcac_osnet"), ["data.root", data_root, "data.save_dir",
                                                        str(tmp_path / "resumed"), "model.resume", latest, *opts])
    prepared = prepare(cfg)
    restored = prepared.model.state_dict()
    assert restored.keys() == state["state_dict"].keys()
    assert all(torch.equal(restored[k], v) for k, v in state["state_dict"].items())
    assert torch.equal(prepared.engine.memory.prototypes, state["engine_state"]["pcl_memory"])
    # the exported encoder (backbone + BNNeck) reproduces the run's features exactly
    encoder = load_file(os.path.join(save_dir, "encoder.safetensors"))
    assert encoder and all(k.startswith(("backbone.", "bnneck.")) for k in encoder)
    fresh = build(name, num_classes=3)
    load_encoder(fresh, os.path.join(save_dir, "encoder.safetensors"))
    images = torch.randn(3, 3, 64, 32)
    # what dcac extract / export / visualize rebuild from the run directory
    trained, _, _ = load_trained_model(save_dir)
    assert isinstance(trained, ToolboxReID)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(images), prepared.model.eval()(images))
        assert torch.equal(trained(images), prepared.model.eval()(images))


# ------------------------------------------------------------------ stats

def reid_parameters(name, num_classes):
    """The torchreid model's parameters without its classifier, plus BNNeck weight and bias-free classifier."""
    with torch.device("meta"):
        network = models.build_model(name, num_classes=num_classes, loss="softmax", pretrained=False)
    own = sum(p.numel() for n, p in network.named_parameters() if not n.startswith("classifier."))
    dim = network.classifier.in_features
    return own + dim + dim * num_classes


@pytest.mark.parametrize("model", ["osnet_ain_x1_0", "resnet50"])
def test_stats_count_the_toolbox_model_and_the_diffusion_branch(model, capsys):
    config = f"toolbox/dcac_{model}_market1501_to_msmt17"
    assert main(["stats", "--config-file", config, "--parameters-only"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_classes"] == 751
    assert stats["reid_model"] == {"total": reid_parameters(model, 751), "trainable": reid_parameters(model, 751)}
    # the diffusion branch does not depend on the Re-ID model: Table 6's LoRA-r8 counts
    assert stats["id_prompts"]["trainable"] == 751 * 768 and stats["unet"]["trainable"] == 2_492_928


def test_stats_flops_name_the_toolbox_backbone(capsys):
    assert main(["stats", "--config-file", "toolbox/dcac_osnet_ain_x1_0_market1501_to_msmt17", "--batch-size", "4"]) == 0
    stats = json.loads(capsys.readouterr().out)
    flops = stats["flops"]
    assert "vit" not in flops["components"]
    backbone = flops["components"]["reid_backbone"]
    # OSNet-AIN x1.0 at 256x128: about 1 GMAC per image (torchreid's model zoo), 2 FLOPs per multiply-add
    assert 1.6e-3 < backbone / 4 < 2.4e-3
    assert flops["training_baseline"] == pytest.approx(backbone, abs=2e-3)
    assert flops["training_dcac_latent_cache"] > flops["training_baseline"] + flops["components"]["unet"] - 2e-3
    assert stats["memory"]["dcac"]["peak_gb"] > stats["memory"]["baseline"]["peak_gb"] > 0


# ------------------------------------------------------------- configs and demo

def torchreid_recipe(file):
    with open(os.path.join(FIXTURES, file), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


RECIPE_FILES = {"osnet_ain_x1_0": "im_osnet_ain_x1_0_softmax_256x128_amsgrad_cosine.yaml",
                "resnet50": "im_r50_softmax_256x128_amsgrad.yaml"}
TOOLBOX_CONFIGS = {(engine, model, source, target): os.path.join(
    PAPER_CONFIG_DIR, "toolbox", f"{engine}_{model}_{source}_to_{target}.yaml")
    for engine in ("softmax", "baseline", "dcac") for model in RECIPE_FILES for source, target in SINGLE_SOURCE_PAIRS}


def test_toolbox_configs_cover_both_models_on_every_single_source_pair():
    assert all(os.path.isfile(path) for path in TOOLBOX_CONFIGS.values())
    listed = [line.strip() for line in open(os.path.join(PAPER_CONFIG_DIR, "lists", "toolbox.txt"))
              if line.strip() and not line.startswith("#")]
    assert sorted(os.path.normpath(os.path.join(PAPER_CONFIG_DIR, "lists", e)) for e in listed) == sorted(
        TOOLBOX_CONFIGS.values())


@pytest.mark.parametrize("model", sorted(RECIPE_FILES))
def test_softmax_configs_are_torchreids_recipe(model):
    recipe = torchreid_recipe(RECIPE_FILES[model])
    for (engine, name, source, target), path in TOOLBOX_CONFIGS.items():
        if engine != "softmax" or name != model:
            continue
        cfg = build_config(path, [])
        assert cfg.engine == "softmax" and cfg.model.name == model and cfg.model.pretrained
        assert (cfg.data.sources, cfg.data.targets) == ([source], [target])
        for key in ("height", "width", "transforms"):
            assert cfg.data[key] == recipe["data"][key], key
        for key, value in recipe["train"].items():
            assert cfg.train[key] == value, key
        assert cfg.loss.softmax.label_smooth == recipe["loss"]["softmax"]["label_smooth"]
        assert cfg.test.dist_metric == recipe["test"]["dist_metric"]
        assert cfg.test.batch_size == recipe["test"]["batch_size"]
        assert cfg.sampler.train_sampler == "RandomSampler"  # torchreid's default; the recipes set none


@pytest.mark.parametrize("model", sorted(RECIPE_FILES))
def test_baseline_and_dcac_configs_take_optimiser_and_lr_from_torchreid_the_rest_from_the_paper(model):
    recipe = torchreid_recipe(RECIPE_FILES[model])["train"]
    paper = build_config(os.path.join(PAPER_CONFIG_DIR, "single", "dcac_market1501_to_msmt17.yaml"), [])
    for (engine, name, source, target), path in TOOLBOX_CONFIGS.items():
        if engine == "softmax" or name != model:
            continue
        cfg = build_config(path, [])
        assert cfg.engine == engine and cfg.model.name == model and cfg.model.pretrained
        assert (cfg.train.optim, cfg.train.lr) == (recipe["optim"], recipe["lr"])
        assert cfg.data.norm_mean == [0.485, 0.456, 0.406] and cfg.data.norm_std == [0.229, 0.224, 0.225]
        for key in ("max_epoch", "batch_size", "lr_scheduler", "stepsize", "fixbase_epoch"):
            assert cfg.train[key] == paper.train[key], key
        assert cfg.sampler == paper.sampler and cfg.data.transforms == paper.data.transforms
        if engine == "dcac":
            reference = build_config(os.path.join(PAPER_CONFIG_DIR, "single", f"dcac_{source}_to_{target}.yaml"), [])
            assert cfg.dcac.lora.rank == reference.dcac.lora.rank
            assert cfg.dcac.condition.temperature == reference.dcac.condition.temperature
            assert cfg.dcac.diffusion.pretrained == reference.dcac.diffusion.pretrained
    for engine in ("softmax", "baseline", "dcac"):
        check_config(build_config(TOOLBOX_CONFIGS[(engine, model, "msmt17", "cuhk03")], []))


def test_demo_dcac_on_osnet_differs_from_the_softmax_demo_in_engine_only():
    softmax = build_config(demo_config_path("softmax"), [])
    dcac_osnet = build_config(demo_config_path("dcac_osnet"), [])
    dcac_vit = build_config(demo_config_path("dcac"), [])
    assert (softmax.engine, dcac_osnet.engine) == ("softmax", "dcac")
    assert dcac_osnet.model == softmax.model and dcac_osnet.sampler == softmax.sampler
    assert {k: v for k, v in dcac_osnet.data.items() if k != "save_dir"} == {
        k: v for k, v in softmax.data.items() if k != "save_dir"}
    # train.amp: auto (the paper recipe's) is off on the CPU, the softmax demo's value
    assert resolve_amp(dcac_osnet.train.amp, torch.device("cpu")) == softmax.train.amp == "off"
    assert {k: v for k, v in dcac_osnet.train.items() if k != "amp"} == {
        k: v for k, v in softmax.train.items() if k != "amp"}
    assert dcac_osnet.loss.softmax == softmax.loss.softmax
    assert dcac_osnet.dcac.diffusion == dcac_vit.dcac.diffusion and dcac_osnet.dcac.lora == dcac_vit.dcac.lora
    assert dcac_osnet.dcac.condition == dcac_vit.dcac.condition


def test_experiments_tables_give_toolbox_runs_no_paper_row():
    from dcac_config.generators.protocols import paper_variant
    from dcac_plugin.tools.experiments import load_paper_results

    variants = {row["variant"] for row in load_paper_results()}
    for engine in ("softmax", "baseline", "dcac"):
        cfg = build_config(TOOLBOX_CONFIGS[(engine, "resnet50", "market1501", "msmt17")], [])
        assert paper_variant(cfg) == f"{engine} model=resnet50" and paper_variant(cfg) not in variants
    paper = build_config(os.path.join(PAPER_CONFIG_DIR, "single", "dcac_market1501_to_msmt17.yaml"), [])
    assert paper_variant(paper) == "dcac" and "dcac" in variants
