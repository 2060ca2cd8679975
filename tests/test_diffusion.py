"""Diffusion branch of DCAC (paper 4.2): SD1.5 sizes on the meta device, LoRA, eq. 9-11, loading."""
import json
import os
import re
import shutil

import pytest
import torch
from diffusers import DDPMScheduler
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file

from dcac_plugin.diffusion import (DEFAULT_PRETRAINED, FINETUNE_MODES, LORA_TARGET_MODULES, DiffusionDenoiser,
                                   DiffusionWeightsError, apply_finetune_mode, build_diffusion_architecture,
                                   check_noise_schedule, count_parameters, denoising_loss, load_diffusion_components,
                                   load_diffusion_configs, load_trainable_state_dict, noisy_latents,
                                   posterior_parameters, sample_from_posterior, sample_latents,
                                   save_tiny_stable_diffusion, trainable_state_dict)

SD15_UNET_PARAMS = 859_520_964
SD15_VAE_PARAMS = 83_653_863
LORA_PARAMS_PER_RANK = 311_616
TINY_PROMPT_DIM = 32
ADAPTED_SUFFIXES = tuple(
    f"{attn}.{proj}" for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out.0")
) + ("ff.net.0.proj",)


# ---------------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return save_tiny_stable_diffusion(str(tmp_path_factory.mktemp("sd") / "tiny"), seed=0)


@pytest.fixture
def tiny(tiny_sd):
    return load_diffusion_components(tiny_sd)


@pytest.fixture(scope="module")
def sd15_configs():
    return load_diffusion_configs(DEFAULT_PRETRAINED)


def unet_inputs(batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, 16, 16, generator=gen)
    timesteps = torch.tensor([10, 700][:batch])
    condition = torch.randn(batch, 1, TINY_PROMPT_DIM, generator=gen)
    return latents, timesteps, condition


def unet_output(unet, inputs):
    latents, timesteps, condition = inputs
    with torch.no_grad():
        return unet(latents, timesteps, encoder_hidden_states=condition).sample


def lora_layers(unet):
    return {name: module for name, module in unet.named_modules() if isinstance(module, LoraLayer)}


def randomise_lora_b(unet, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(unet).values():
            weight = layer.lora_B["default"].weight
            weight.copy_(torch.randn(weight.shape, generator=gen) * 0.1)


def images(batch=2, seed=0):
    return torch.rand(batch, 3, 128, 128, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------
# SD1.5 sizes, built on the meta device from the shipped configs (no download)
# ---------------------------------------------------------------------------------------------

def test_sd15_architecture_is_built_on_meta_with_paper_sizes(sd15_configs):
    unet, vae, scheduler = build_diffusion_architecture(sd15_configs)[:3]
    assert all(p.is_meta for p in unet.parameters())
    assert count_parameters(unet) == {"total": SD15_UNET_PARAMS, "trainable": 0}  # paper: 859.52 M
    assert count_parameters(vae) == {"total": SD15_VAE_PARAMS, "trainable": 0}
    assert unet.config.cross_attention_dim == 768
    assert isinstance(scheduler, DDPMScheduler)


@pytest.mark.parametrize("rank", [8, 32])
def test_sd15_lora_parameter_count(sd15_configs, rank):
    unet = build_diffusion_architecture(sd15_configs).unet
    apply_finetune_mode(unet, "lora", rank=rank)
    counts = count_parameters(unet)
    lora = sum(p.numel() for name, p in unet.named_parameters() if "lora_" in name)
    assert counts["trainable"] == lora == LORA_PARAMS_PER_RANK * rank
    assert counts["total"] == SD15_UNET_PARAMS + lora


@pytest.mark.parametrize(
    "mode, expected, paper_millions",
    [
        ("frozen", 0, 0.0),
        ("partial1", 512_858_564, 512.86),
        ("partial2", 609_896_644, 609.90),
        ("full", SD15_UNET_PARAMS, 859.52),
        ("scratch", SD15_UNET_PARAMS, 859.52),
    ],
)
def test_sd15_trainable_counts_match_paper_table6(sd15_configs, mode, expected, paper_millions):
    unet = apply_finetune_mode(build_diffusion_architecture(sd15_configs).unet, mode)
    trainable = count_parameters(unet)["trainable"]
    assert trainable == expected
    assert abs(trainable / 1e6 - paper_millions) <= 0.01


def test_unknown_mode_names_the_valid_ones(tiny):
    with pytest.raises(ValueError, match="partial2"):
        apply_finetune_mode(tiny.unet, "lora8")


@pytest.mark.parametrize("mode, prefixes", [
    ("partial1", ("up_blocks.", "conv_norm_out.", "conv_out.", "time_embedding.")),
    ("partial2", ("up_blocks.", "conv_norm_out.", "conv_out.", "time_embedding.", "mid_block.")),
])
def test_partial_modes_train_exactly_their_blocks(tiny, mode, prefixes):
    tiny.unet.requires_grad_(True)  # a mode sets the whole U-Net, whatever trained before
    unet = apply_finetune_mode(tiny.unet, mode)
    for name, param in unet.named_parameters():
        assert param.requires_grad == name.startswith(prefixes), name


# ---------------------------------------------------------------------------------------------
# LoRA (paper eq. 9)
# ---------------------------------------------------------------------------------------------

def test_lora_regex_selects_only_attention_and_geglu_projections():
    block = "up_blocks.1.attentions.2.transformer_blocks.0."
    for suffix in ADAPTED_SUFFIXES:
        assert re.fullmatch(LORA_TARGET_MODULES, block + suffix)
    for name in (block + "ff.net.2", block + "attn1.to_out.1", "up_blocks.1.attentions.2.proj_in",
                 "up_blocks.1.attentions.2.proj_out", "down_blocks.0.resnets.0.conv1",
                 "time_embedding.linear_1", "mid_block.attentions.0.transformer_blocks.0.attn2"):
        assert not re.fullmatch(LORA_TARGET_MODULES, name), name


def test_lora_adapts_exactly_the_paper_targets_in_every_transformer_block(tiny):
    blocks = [name for name, _ in tiny.unet.named_modules() if re.search(r"transformer_blocks\.\d+$", name)]
    assert len(blocks) == 4  # down 0, mid, up 1 (x2): every one must be adapted
    expected = {f"{block}.{suffix}" for block in blocks for suffix in ADAPTED_SUFFIXES}
    unet = apply_finetune_mode(tiny.unet, "lora", rank=4)
    assert set(lora_layers(unet)) == expected
    trainable = {name for name, p in unet.named_parameters() if p.requires_grad}
    assert trainable == {f"{layer}.lora_{ab}.default.weight" for layer in expected for ab in "AB"}


def test_fresh_lora_leaves_the_unet_output_exactly_unchanged(tiny):
    inputs = unet_inputs()
    before = unet_output(tiny.unet, inputs)
    unet = apply_finetune_mode(tiny.unet, "lora", rank=4)
    for layer in lora_layers(unet).values():
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
        # A kaiming-uniform (a = sqrt(5), as nn.Linear): uniform within +-1/sqrt(d_in).
        bound = layer.get_base_layer().in_features ** -0.5
        assert 0.5 * bound < layer.lora_A["default"].weight.abs().max() <= bound
        assert layer.lora_A["default"].bias is None and layer.lora_B["default"].bias is None
    assert torch.equal(unet_output(unet, inputs), before)
    randomise_lora_b(unet)
    assert not torch.allclose(unet_output(unet, inputs), before, atol=1e-4)


@pytest.mark.parametrize("name", ["attn1.to_q", "attn2.to_v", "attn1.to_out.0", "ff.net.0.proj"])
def test_lora_layer_follows_eq9_with_scale_one_over_rank(tiny, name):
    rank = 4
    unet = apply_finetune_mode(tiny.unet, "lora", rank=rank, alpha=1.0)
    randomise_lora_b(unet)
    layer = unet.get_submodule(f"down_blocks.0.attentions.0.transformer_blocks.0.{name}")
    assert layer.scaling["default"] == pytest.approx(1.0 / rank)
    base = layer.get_base_layer()
    h = torch.randn(5, base.in_features)
    A = layer.lora_A["default"].weight  # [r, d_in]  (peft stores nn.Linear weights: eq. 9's A^T)
    B = layer.lora_B["default"].weight  # [d_out, r] (eq. 9's B^T)
    expected = h @ base.weight.T + (1.0 / rank) * h @ A.T @ B.T
    if base.bias is not None:
        expected = expected + base.bias
    with torch.no_grad():
        assert torch.allclose(layer(h), expected, atol=1e-5)
        assert not torch.allclose(base(h), expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Gradients through the denoiser
# ---------------------------------------------------------------------------------------------

def test_frozen_unet_still_passes_the_gradient_to_the_condition(tiny):
    denoiser = DiffusionDenoiser(*tiny[:3])
    apply_finetune_mode(denoiser.unet, "frozen")
    assert count_parameters(denoiser)["trainable"] == 0
    condition = torch.randn(2, 1, denoiser.prompt_dim, requires_grad=True)
    denoiser(images(), condition, generator=torch.Generator().manual_seed(0)).backward()
    assert condition.grad is not None and condition.grad.abs().sum() > 0
    assert all(p.grad is None for p in denoiser.parameters())


def test_denoiser_backward_reaches_lora_and_condition_only(tiny):
    denoiser = DiffusionDenoiser(*tiny[:3])
    apply_finetune_mode(denoiser.unet, "lora", rank=4)
    denoiser.train()
    assert denoiser.unet.training and not denoiser.vae.training
    assert denoiser.prompt_dim == TINY_PROMPT_DIM
    condition = torch.randn(2, 1, denoiser.prompt_dim, requires_grad=True)
    loss = denoiser(images(), condition, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and loss > 0
    assert condition.grad.abs().sum() > 0
    for name, param in denoiser.named_parameters():
        if "lora_" in name:
            assert param.grad is not None, name
        else:
            assert param.grad is None, name
    # B = 0 at start: A gets no gradient yet, B does (cross-attention values carry the condition).
    layers = lora_layers(denoiser.unet)
    assert all(layer.lora_A["default"].weight.grad.abs().sum() == 0 for layer in layers.values())
    assert all(layers[n].lora_B["default"].weight.grad.abs().sum() > 0 for n in layers if n.endswith("attn2.to_v"))
    assert all(layers[n].lora_B["default"].weight.grad.abs().sum() > 0 for n in layers if n.endswith("attn1.to_q"))
    assert all(k.startswith("unet.") and "lora_" in k for k in trainable_state_dict(denoiser))


def test_denoiser_takes_given_latents_and_checks_the_condition_shape(tiny):
    denoiser = DiffusionDenoiser(*tiny[:3])
    latents = torch.randn(3, 4, 16, 16)
    loss = denoiser(None, torch.randn(3, 1, TINY_PROMPT_DIM), latents=latents)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="condition"):
        denoiser(None, torch.randn(3, TINY_PROMPT_DIM), latents=latents)


# ---------------------------------------------------------------------------------------------
# Latents, noising (eq. 10) and the loss (eq. 11)
# ---------------------------------------------------------------------------------------------

def test_noisy_latents_follow_eq10_with_scaled_linear_betas(tiny):
    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 16, 16, generator=gen), torch.randn(3, 4, 16, 16, generator=gen)
    timesteps = torch.tensor([0, 500, 999])
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, dim=0)[timesteps].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * latents.double() + (1 - alpha_bar).sqrt() * noise.double()
    result = noisy_latents(latents, noise, timesteps, tiny.noise_scheduler)
    assert torch.allclose(result.double(), expected, atol=1e-5)
    assert not torch.allclose(result, latents, atol=1e-2)


def test_denoising_loss_is_eq11_mean_squared_error():
    pred, noise = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    assert torch.allclose(denoising_loss(pred, noise), ((pred - noise) ** 2).mean())


def test_sample_latents_is_a_scaled_posterior_sample(tiny):
    x = images()
    latents = sample_latents(tiny.vae, x, generator=torch.Generator().manual_seed(3))
    assert latents.shape == (2, 4, 16, 16)  # 8x downsampling, like SD on 128x128 inputs
    assert not latents.requires_grad
    mean, std = posterior_parameters(tiny.vae, x)
    same = sample_from_posterior(mean, std, generator=torch.Generator().manual_seed(3))
    assert torch.equal(latents, same)
    assert torch.equal(sample_from_posterior(mean, torch.zeros_like(std)), mean * 0.18215)
    assert not torch.allclose(latents, mean * 0.18215, atol=1e-4)  # a sample, not the mode


# ---------------------------------------------------------------------------------------------
# Loading, saving and checkpoints
# ---------------------------------------------------------------------------------------------

def test_tiny_model_round_trip_is_deterministic_frozen_and_idempotent(tiny_sd, tmp_path):
    loaded = load_diffusion_components(tiny_sd)
    again = load_diffusion_components(save_tiny_stable_diffusion(str(tmp_path / "copy"), seed=0))
    other = load_diffusion_components(save_tiny_stable_diffusion(str(tmp_path / "other"), seed=1))
    for part in ("unet", "vae"):
        state, state_again = getattr(loaded, part).state_dict(), getattr(again, part).state_dict()
        assert state.keys() == state_again.keys()
        assert all(torch.equal(state[k], state_again[k]) for k in state)
        state_other = getattr(other, part).state_dict()
        assert not any(torch.equal(state[k], state_other[k]) for k in state if k.endswith("conv_in.weight"))
        assert count_parameters(getattr(loaded, part))["trainable"] == 0
    assert not loaded.vae.training
    assert loaded.vae.config.scaling_factor == 0.18215
    check_noise_schedule(loaded.noise_scheduler.config)
    written_at = os.path.getmtime(os.path.join(tiny_sd, "unet"))
    assert save_tiny_stable_diffusion(tiny_sd, seed=0) == tiny_sd
    assert os.path.getmtime(os.path.join(tiny_sd, "unet")) == written_at
    with pytest.raises(FileExistsError):
        save_tiny_stable_diffusion(tiny_sd, seed=5)


def test_random_unet_mode_reinitialises_only_the_unet(tiny_sd):
    loaded = load_diffusion_components(tiny_sd)
    scratch = load_diffusion_components(tiny_sd, random_unet=True)
    assert not torch.equal(loaded.unet.conv_in.weight, scratch.unet.conv_in.weight)
    assert torch.equal(loaded.vae.encoder.conv_in.weight, scratch.vae.encoder.conv_in.weight)


def test_wrong_noise_schedule_is_rejected(tiny_sd, tmp_path):
    folder = shutil.copytree(tiny_sd, tmp_path / "linear")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["beta_schedule"] = "linear"
    config_file.write_text(json.dumps(config))
    # A user error (one line, naming the file), no longer a bare ValueError's traceback.
    with pytest.raises(DiffusionWeightsError, match=f"beta_schedule.*{config_file}"):
        load_diffusion_components(str(folder))
    with pytest.raises(ValueError, match="prediction_type"):
        check_noise_schedule(dict(DDPMScheduler().config, beta_schedule="scaled_linear",
                                  beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"))


@pytest.mark.parametrize("source", ["/nonexistent/stable-diffusion", "nobody-here/not-a-cached-model"])
def test_missing_weights_say_what_to_download_and_which_key_to_set(source):
    with pytest.raises(DiffusionWeightsError, match=r"dcac\.diffusion\.pretrained"):
        load_diffusion_components(source)
    with pytest.raises(DiffusionWeightsError, match=r"dcac\.diffusion\.pretrained"):
        load_diffusion_configs(source)


def test_folder_without_vae_is_a_weights_error(tiny_sd, tmp_path):
    folder = shutil.copytree(tiny_sd, tmp_path / "novae")
    shutil.rmtree(folder / "vae")
    with pytest.raises(DiffusionWeightsError, match="vae"):
        load_diffusion_components(str(folder))


def test_configs_of_sd15_sources_need_no_download(sd15_configs, tiny_sd, tmp_path):
    assert sd15_configs["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    # The published VAE config has no scaling_factor: diffusers' default, SD's 0.18215, applies.
    assert "scaling_factor" not in sd15_configs["vae"]
    assert build_diffusion_architecture(sd15_configs).vae.config.scaling_factor == 0.18215
    check_noise_schedule(sd15_configs["scheduler"])
    single_file = tmp_path / "v1-5-pruned.safetensors"
    save_file({"x": torch.zeros(1)}, str(single_file))
    assert load_diffusion_configs(str(single_file)) == sd15_configs
    assert load_diffusion_configs(tiny_sd)["unet"]["cross_attention_dim"] == TINY_PROMPT_DIM


@pytest.mark.parametrize("content, message", [
    ({"encoder.weight": torch.zeros(2)}, "not an original-format"),
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(3),
      "first_stage_model.encoder.conv_in.weight": torch.zeros(3)}, "could not be converted"),
    (b"not a safetensors file", "Cannot read"),
])
def test_invalid_single_file_fails_naming_the_file(tmp_path, content, message):
    path = tmp_path / "model.safetensors"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        save_file(content, str(path))
    with pytest.raises(DiffusionWeightsError, match=message) as info:
        load_diffusion_components(str(path))
    assert str(path) in str(info.value) and "dcac.diffusion.pretrained" in str(info.value)


def test_ckpt_weights_nested_under_state_dict_are_used(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(3),
                               "first_stage_model.encoder.conv_in.weight": torch.zeros(3)},
                "global_step": 1}, str(path))
    # Past the layout check (the nested dict was found); the wrong shapes then fail the conversion.
    with pytest.raises(DiffusionWeightsError, match="could not be converted"):
        load_diffusion_components(str(path))


def test_trainable_state_dict_holds_only_lora_and_restores_outputs(tiny_sd):
    trained = apply_finetune_mode(load_diffusion_components(tiny_sd).unet, "lora", rank=4)
    randomise_lora_b(trained)
    state = trainable_state_dict(trained)
    assert state and all("lora_" in key for key in state)
    assert len(state) == 2 * len(lora_layers(trained))
    fresh = apply_finetune_mode(load_diffusion_components(tiny_sd).unet, "lora", rank=4)
    inputs = unet_inputs()
    assert not torch.equal(unet_output(fresh, inputs), unet_output(trained, inputs))
    load_trainable_state_dict(fresh, state)
    assert torch.equal(unet_output(fresh, inputs), unet_output(trained, inputs))
    with pytest.raises(ValueError, match=r"1 missing keys .* 0 unexpected keys"):
        load_trainable_state_dict(fresh, dict(list(state.items())[1:]))
    with pytest.raises(ValueError, match=r"0 missing keys .* 1 unexpected keys"):
        load_trainable_state_dict(fresh, {**state, "conv_in.weight": trained.conv_in.weight})


def test_finetune_modes_are_the_paper_variants():
    assert FINETUNE_MODES == ("frozen", "lora", "partial1", "partial2", "full", "scratch")
