import json
import os
from types import SimpleNamespace

import pytest
import torch
from conftest import fixed_dcac_batch, make_engine
from safetensors.torch import load_file
from torchreid import models

from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path
from dcac_plugin.cli import main
from dcac_plugin.diffusion import save_tiny_stable_diffusion
from dcac_plugin.engines.dcac import DCACEngine, build_diffusion_feedback
from dcac_plugin.run.launcher import prepare
from dcac_plugin.utils.checkpoint import load_checkpoint, load_encoder


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return save_tiny_stable_diffusion(str(tmp_path_factory.mktemp("sd") / "tiny-sd"))


def dcac_cfg(tiny_sd, *opts):
    return build_config(demo_config_path("dcac"), ["dcac.diffusion.pretrained", tiny_sd, *opts])


def build_pair(tiny_sd, num_classes=6, *opts):
    torch.manual_seed(0)
    model = models.build_model("clip_vit_tiny", num_classes=num_classes, loss="reid", pretrained=False)
    feedback = build_diffusion_feedback(dcac_cfg(tiny_sd, *opts), num_classes, model.feature_dim)
    return model, feedback


def test_diffusion_loss_alone_reaches_the_reid_model_and_not_frozen_weights(tiny_sd):
    model, feedback = build_pair(tiny_sd)
    out = model.train()(torch.randn(4, 3, 128, 64))
    loss_dif = feedback(torch.rand(4, 3, 128, 128) * 2 - 1, out.logits, out.f_bn, torch.tensor([0, 1, 2, 3]))
    loss_dif.backward()
    nonzero = lambda p: p.grad is not None and p.grad.abs().sum() > 0  # noqa: E731
    assert nonzero(feedback.condition.prompts)
    assert nonzero(model.classifier.weight)
    assert nonzero(model.bnneck.weight)
    assert nonzero(model.backbone.transformer.resblocks[0].attn.in_proj_weight)
    assert nonzero(model.backbone.transformer.resblocks[1].mlp.c_fc.weight)
    lora = [p for n, p in feedback.denoiser.unet.named_parameters() if "lora_B" in n]
    assert lora and any(nonzero(p) for p in lora)
    frozen_unet = [p for n, p in feedback.denoiser.unet.named_parameters() if "lora_" not in n]
    assert frozen_unet and all(p.grad is None and not p.requires_grad for p in frozen_unet)
    assert all(p.grad is None for p in feedback.denoiser.vae.parameters())


def test_the_bnneck_runs_once_per_training_step(tiny_sd):
    # The reference runs it twice per step (encoder, then the diffusion wrapper), updating its
    # running statistics twice; ours hands the one f_bn and logits to all three losses.
    engine, model, _ = make_engine(tiny_sd)
    batch = fixed_dcac_batch(engine, model)
    calls = []
    handle = model.bnneck.register_forward_hook(lambda module, inputs, output: calls.append(module.training))
    tracked, running_mean = int(model.bnneck.num_batches_tracked), model.bnneck.running_mean.clone()
    try:
        summary = engine.forward_backward(batch)
    finally:
        handle.remove()
    assert summary["loss_dif"] > 0  # the diffusion branch did run on this step
    assert calls == [True]
    assert int(model.bnneck.num_batches_tracked) == tracked + 1
    assert not torch.equal(model.bnneck.running_mean, running_mean)


def fake_datamanager(num_classes):
    return SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=num_classes, sources=[])


def test_a_few_dcac_steps_lower_the_total_loss_on_a_fixed_batch(tiny_sd):
    model, feedback = build_pair(tiny_sd, 4)
    params = list(model.parameters()) + [p for p in feedback.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    engine = DCACEngine(fake_datamanager(4), model, optimizer, use_gpu=False, feedback=feedback)
    batch = fixed_dcac_batch(engine, model)
    losses = []
    for _ in range(8):
        torch.manual_seed(7)  # the same timesteps and noise every step: the loss is a function of the weights
        summary = engine.forward_backward(batch)
        losses.append(summary["loss"])
        assert summary["loss"] == pytest.approx(summary["loss_id"] + summary["loss_pcl"] + summary["loss_dif"], rel=1e-5)
    assert losses[-1] < losses[0]


def test_dcac_train_end_to_end_checkpoint_export_and_exact_restore(data_root, tmp_path, tiny_sd):
    save_dir = str(tmp_path / "run")
    code = main(["train", "--config-file", demo_config_path("dcac"), "--root", data_root, "data.save_dir", save_dir,
                 "dcac.diffusion.pretrained", tiny_sd, "train.max_epoch", "1", "train.print_freq", "100"])
    assert code == 0
    results = json.load(open(os.path.join(save_dir, "results.json")))
    assert results["engine"] == "dcac" and 0 < results["results"]["synthetic_b"]["mAP"] <= 1
    ckpt_path = os.path.join(save_dir, "model", "model.pth.tar-1")
    state = load_checkpoint(ckpt_path)
    diffusion = state["engine_state"]["diffusion"]
    # only what training changes: prompts and LoRA adapters, never the frozen U-Net or the VAE
    assert "condition.prompts" in diffusion
    assert all(k == "condition.prompts" or "lora_" in k for k in diffusion)
    assert not any(k.startswith("denoiser.vae") for k in diffusion)
    # exact restore through model.resume
    cfg = dcac_cfg(tiny_sd, "data.root", data_root, "data.save_dir", str(tmp_path / "resumed"),
                   "model.resume", ckpt_path)
    prepared = prepare(cfg)
    assert prepared.run_kwargs["start_epoch"] == 1
    for key, value in state["state_dict"].items():
        assert torch.equal(prepared.model.state_dict()[key], value), key
    restored = prepared.engine.feedback.checkpoint_state_dict()
    assert set(restored) == set(diffusion)
    assert all(torch.equal(restored[k], diffusion[k]) for k in diffusion)
    assert torch.equal(prepared.engine.memory.prototypes, state["engine_state"]["pcl_memory"])
    saved_opt, restored_opt = state["optimizer"]["state"], prepared.optimizer.state_dict()["state"]
    assert saved_opt.keys() == restored_opt.keys() and len(saved_opt) > 0
    assert all(torch.equal(saved_opt[i]["exp_avg"], restored_opt[i]["exp_avg"]) for i in saved_opt)
    # the test-time export holds the encoder alone and reproduces the features exactly
    encoder = load_file(os.path.join(save_dir, "encoder.safetensors"))
    assert encoder and all(k.startswith(("backbone.", "bnneck.")) for k in encoder)
    fresh = models.build_model("clip_vit_tiny", num_classes=3, loss="softmax", pretrained=False)
    load_encoder(fresh, os.path.join(save_dir, "encoder.safetensors"))
    images = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(images), prepared.model.eval()(images))


TABLE6_TRAINABLE_M = {"frozen": 86.51, "lora": 89.01, "partial1": 599.37, "partial2": 696.41, "full": 946.03}


@pytest.mark.parametrize("mode", sorted(TABLE6_TRAINABLE_M))
def test_stats_reproduce_table6_trainable_parameters(mode, capsys):
    assert main(["stats", "--parameters-only", "--num-classes", "751", "dcac.finetune", mode, "dcac.lora.rank", "8"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["trainable_total_millions"] == TABLE6_TRAINABLE_M[mode]
    assert stats["reid_model"]["trainable"] == 85_935_616
    assert stats["id_prompts"]["trainable"] == 751 * 768
    assert stats["vae"] == {"total": 83_653_863, "trainable": 0}


def test_stats_default_identity_counts_and_rank(capsys):
    assert main(["stats", "--parameters-only", "-s", "market1501", "dukemtmcreid", "msmt17", "--root", "unused", "dcac.lora.rank", "32"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_classes"] == 751 + 702 + 1041
    assert stats["unet"]["trainable"] == 311_616 * 32
