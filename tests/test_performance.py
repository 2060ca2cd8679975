import pytest
import torch
from conftest import fixed_dcac_batch, make_engine, one_dcac_step

from dcac_config.errors import ConfigError
from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path
from dcac_plugin.engines import baseline as baseline_module
from dcac_plugin.engines.baseline import BaselineEngine
from dcac_plugin.losses.pcl import prototypical_contrastive_loss
from dcac_plugin.run.launcher import check_config, resume
from dcac_plugin.speed.performance import autocast, grad_scaler, resolve_amp


@pytest.fixture(scope="module")
def reference(tiny_sd):
    return one_dcac_step(*make_engine(tiny_sd))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_matches_fp32_within_precision(tiny_sd, reference, amp):
    engine, model, feedback = make_engine(tiny_sd, amp)
    assert engine.scaler.is_enabled() == (amp == "fp16")
    summary, grads = one_dcac_step(engine, model, feedback)
    ref_summary, ref_grads = reference
    for term in ("loss_id", "loss_pcl", "loss_dif"):
        assert summary[term] == pytest.approx(ref_summary[term], rel=0.05), term
    assert set(grads) == set(ref_grads)
    assert all(torch.isfinite(g).all() for g in grads.values())
    prompts = "fb.condition.prompts"
    cosine = torch.nn.functional.cosine_similarity(grads[prompts].flatten(), ref_grads[prompts].flatten(), dim=0)
    assert cosine > 0.95


def test_pcl_logits_are_computed_in_float32_under_autocast(tiny_sd):
    # PCL divides by tau = 0.01: the reference multiplies in fp16 first, which rounds the logits
    # to about 0.05. Ours leaves autocast for the Re-ID losses.
    engine, model, _ = make_engine(tiny_sd, "bf16")
    batch = fixed_dcac_batch(engine, model)
    pids = batch["pid"]
    with autocast(engine.device, engine.amp):
        output = model(batch["img"][0])
        terms = BaselineEngine.compute_losses(engine, output, pids, batch)
        in_autocast = prototypical_contrastive_loss(output.f_bn.float(), engine.memory.prototypes, pids, 0.01)
    assert output.logits.dtype == torch.bfloat16  # the model itself ran in the low precision
    in_float32 = prototypical_contrastive_loss(output.f_bn.float(), engine.memory.prototypes, pids, 0.01)
    assert terms["loss_pcl"].dtype == torch.float32
    assert torch.equal(terms["loss_pcl"], in_float32)
    assert not torch.equal(in_autocast, in_float32)  # the same product under autocast differs


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_sd, reference):
    engine, model, feedback = make_engine(tiny_sd, "off", "train.gradient_checkpointing", "True")
    assert model.backbone.transformer.grad_checkpointing
    assert feedback.denoiser.unet.is_gradient_checkpointing
    summary, grads = one_dcac_step(engine, model, feedback)
    ref_summary, ref_grads = reference
    assert summary["loss"] == pytest.approx(ref_summary["loss"], rel=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4)


def test_compile_option_keeps_results(tiny_sd, reference):
    engine, model, feedback = make_engine(tiny_sd, "off", "train.compile", "eager")
    assert model._compiled_call_impl is not None and feedback.denoiser.unet._compiled_call_impl is not None
    assert "backbone.conv1.weight" in model.state_dict()  # in-place compile keeps the keys
    summary, _ = one_dcac_step(engine, model, feedback)
    assert summary["loss"] == pytest.approx(reference[0]["loss"], rel=1e-5)


def test_attention_uses_sdpa(tiny_sd):
    _, _, feedback = make_engine(tiny_sd)
    processors = {type(p).__name__ for p in feedback.denoiser.unet.attn_processors.values()}
    assert processors == {"AttnProcessor2_0"}


def test_unknown_amp_mode_is_a_config_error():
    cfg = build_config(None, ["engine", "baseline", "train.amp", "fp8"])
    with pytest.raises(ConfigError, match="train.amp"):
        check_config(cfg)


# ------------------------------------------------------------------- train.amp auto


def bf16_support(native: bool, emulated: bool):
    """A stand-in for torch.cuda.is_bf16_supported on a GPU with the given bf16 support."""
    return lambda including_emulation=True: native or (including_emulation and emulated)


@pytest.mark.parametrize("native,emulated", [(True, True),  # Ampere and newer (the paper's A6000, H100)
                                             (False, True),  # V100, T4: bf16 only emulated
                                             (False, False)])  # older GPUs: no bf16 at all
def test_auto_on_any_gpu_is_fp16_with_a_scaler_as_the_authors_trained(monkeypatch, native, emulated):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_support(native, emulated))
    assert torch.cuda.is_bf16_supported() == (native or emulated)  # the GPU the test stands for
    mode = resolve_amp("auto", torch.device("cuda", 0))
    assert mode == "fp16"
    assert grad_scaler(torch.device("cpu"), mode).is_enabled()  # fp16 always gets its scaler


def test_auto_on_the_cpu_is_off_and_explicit_modes_are_kept(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_support(True, True))
    assert resolve_amp("auto", torch.device("cpu")) == "off"
    for mode in ("off", "bf16", "fp16"):
        assert resolve_amp(mode, torch.device("cpu")) == resolve_amp(mode, torch.device("cuda", 0)) == mode
    with pytest.raises(ValueError, match="train.amp 'fp8'.*auto"):
        resolve_amp("fp8", torch.device("cpu"))


def test_engine_resolves_auto_once_before_its_scaler_and_reports_it(tiny_sd, monkeypatch):
    # Asked for the GPU on a machine without one: the engine runs on the CPU, in fp32.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    engine, _, _ = make_engine(tiny_sd, "auto", use_gpu=True)
    assert engine.device.type == "cpu" and engine.amp == "off" and not engine.scaler.is_enabled()
    lines = engine.setup_summary(
        build_config(demo_config_path("dcac"), ["dcac.diffusion.pretrained", tiny_sd, "train.amp", "auto"]))
    assert "Mixed precision: off (train.amp auto, cpu)" in lines and "Weights on: cpu" in lines
    # Where auto resolves to fp16, the scaler is built for fp16.
    monkeypatch.setattr(baseline_module, "resolve_amp", lambda mode, device: "fp16")
    engine, _, _ = make_engine(tiny_sd, "auto")
    assert engine.amp == "fp16" and engine.scaler.is_enabled()


def test_auto_step_on_the_cpu_equals_the_fp32_step_exactly(tiny_sd, reference):
    summary, grads = one_dcac_step(*make_engine(tiny_sd, "auto"))
    ref_summary, ref_grads = reference
    assert summary == ref_summary
    assert set(grads) == set(ref_grads) and all(torch.equal(grads[n], ref_grads[n]) for n in grads)


def test_resolved_fp16_scaler_state_survives_checkpoint_and_resume(tiny_sd, monkeypatch, tmp_path):
    monkeypatch.setattr(baseline_module, "resolve_amp", lambda mode, device: "fp16" if mode == "auto" else mode)
    engine, model, feedback = make_engine(tiny_sd, "auto")
    one_dcac_step(engine, model, feedback)
    saved = engine.scaler.state_dict()
    assert saved["_growth_tracker"] == 1  # the step moved the scaler on
    engine.write_checkpoints(0, 0.0, str(tmp_path))

    resumed, resumed_model, resumed_feedback = make_engine(tiny_sd, "auto")
    assert resumed.scaler.state_dict() != saved
    assert resume(str(tmp_path), resumed_model, resumed) == 1
    assert resumed.scaler.state_dict() == saved
    one_dcac_step(resumed, resumed_model, resumed_feedback)  # and it trains on from there
    assert resumed.scaler.state_dict()["_growth_tracker"] == 2

    # The same checkpoint resumed where auto resolves to off (e.g. on the CPU): no scaler to restore.
    monkeypatch.setattr(baseline_module, "resolve_amp", resolve_amp)
    on_cpu, cpu_model, _ = make_engine(tiny_sd, "auto")
    assert resume(str(tmp_path), cpu_model, on_cpu) == 1
    assert on_cpu.amp == "off" and not on_cpu.scaler.is_enabled()
