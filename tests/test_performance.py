from types import SimpleNamespace

import pytest
import torch

from torchreid import models

from dcac_plugin.config import build_config
from dcac_plugin.diffusion import save_tiny_stable_diffusion
from dcac_plugin.engines.dcac import DCACEngine, build_diffusion_feedback
from dcac_plugin.launcher import apply_speed_options, check_config
from dcac_plugin.cli import demo_config_path
from dcac_plugin.config import ConfigError

from conftest import fixed_dcac_batch


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return save_tiny_stable_diffusion(str(tmp_path_factory.mktemp("sd") / "tiny-sd"))


def make_engine(tiny_sd, amp="off", *opts):
    torch.manual_seed(0)
    cfg = build_config(demo_config_path("dcac"), ["dcac.diffusion.pretrained", tiny_sd, "train.amp", amp, *opts])
    model = models.build_model("clip_vit_tiny", num_classes=4, loss="reid", pretrained=False)
    feedback = build_diffusion_feedback(cfg, 4, model.feature_dim)
    apply_speed_options(cfg, model, feedback)
    params = list(model.parameters()) + [p for p in feedback.parameters() if p.requires_grad]
    manager = SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=4, sources=[])
    engine = DCACEngine(manager, model, torch.optim.SGD(params, lr=0.0), use_gpu=False, feedback=feedback, amp=amp)
    return engine, model, feedback


def one_step(engine, model, feedback):
    batch = fixed_dcac_batch(engine, model)
    torch.manual_seed(7)
    summary = engine.forward_backward(batch)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    grads.update({f"fb.{n}": p.grad.detach().clone() for n, p in feedback.named_parameters() if p.grad is not None})
    return summary, grads


@pytest.fixture(scope="module")
def reference(tiny_sd):
    return one_step(*make_engine(tiny_sd))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_matches_fp32_within_precision(tiny_sd, reference, amp):
    engine, model, feedback = make_engine(tiny_sd, amp)
    assert engine.scaler.is_enabled() == (amp == "fp16")
    summary, grads = one_step(engine, model, feedback)
    ref_summary, ref_grads = reference
    for term in ("loss_id", "loss_pcl", "loss_dif"):
        assert summary[term] == pytest.approx(ref_summary[term], rel=0.05), term
    assert set(grads) == set(ref_grads)
    assert all(torch.isfinite(g).all() for g in grads.values())
    prompts = "fb.condition.prompts"
    cosine = torch.nn.functional.cosine_similarity(grads[prompts].flatten(), ref_grads[prompts].flatten(), dim=0)
    assert cosine > 0.95


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_sd, reference):
    engine, model, feedback = make_engine(tiny_sd, "off", "train.gradient_checkpointing", "True")
    assert model.backbone.transformer.grad_checkpointing
    assert feedback.denoiser.unet.is_gradient_checkpointing
    summary, grads = one_step(engine, model, feedback)
    ref_summary, ref_grads = reference
    assert summary["loss"] == pytest.approx(ref_summary["loss"], rel=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4)


def test_compile_option_keeps_results(tiny_sd, reference):
    engine, model, feedback = make_engine(tiny_sd, "off", "train.compile", "eager")
    assert model._compiled_call_impl is not None and feedback.denoiser.unet._compiled_call_impl is not None
    assert "backbone.conv1.weight" in model.state_dict()  # in-place compile keeps the keys
    summary, _ = one_step(engine, model, feedback)
    assert summary["loss"] == pytest.approx(reference[0]["loss"], rel=1e-5)


def test_attention_uses_sdpa(tiny_sd):
    _, _, feedback = make_engine(tiny_sd)
    processors = {type(p).__name__ for p in feedback.denoiser.unet.attn_processors.values()}
    assert processors == {"AttnProcessor2_0"}


def test_unknown_amp_mode_is_a_config_error():
    cfg = build_config(None, ["engine", "baseline", "train.amp", "fp8"])
    with pytest.raises(ConfigError, match="train.amp"):
        check_config(cfg)
