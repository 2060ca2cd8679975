"""The published Stable Diffusion v1.5 release, in its published form, loads and gives the authors' U-Net.

Fixtures (``tests/sd_release.py``) reproduce the published files: the diffusers-0.6.0 configs
(PNDMScheduler without ``prediction_type``, a VAE config without ``scaling_factor``), the main
(EMA) and ``non_ema`` U-Net weights, the hub cache layout, and the LDM single files with both
U-Net copies. Only the sizes are tiny.
"""
import json
import os

import huggingface_hub
import pytest
import sd_release as release
import torch
from conftest import refuse_download

from dcac_plugin.diffusion import (SD15_CONFIG_DIR, DiffusionWeightsError, check_noise_schedule,
                                   load_diffusion_components)
from dcac_plugin.diffusion.components import sd15_betas
from dcac_plugin.utils import hub


@pytest.fixture(scope="module")
def weights():
    """Distinct EMA and non-EMA U-Net copies, and a VAE."""
    return {"ema": release.tiny_unet_state(0), "non_ema": release.tiny_unet_state(1), "vae": release.tiny_vae_state(2)}


@pytest.fixture(scope="module")
def release_folder(tmp_path_factory, weights):
    return release.write_release_folder(tmp_path_factory.mktemp("sd") / "stable-diffusion-v1-5", weights["ema"],
                                        weights["non_ema"], weights["vae"])


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to list or download from the hub fails the test."""
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", refuse_download)


def same_weights(module, state) -> bool:
    loaded = module.state_dict()
    return loaded.keys() == state.keys() and all(torch.equal(loaded[key], state[key]) for key in state)


# ------------------------------------------------------------------------- the published configs

def test_the_shipped_sd15_configs_are_the_published_files():
    for subfolder, name, published in (("scheduler", "scheduler_config.json", release.PUBLISHED_SCHEDULER_CONFIG),
                                       ("unet", "config.json", release.PUBLISHED_UNET_CONFIG),
                                       ("vae", "config.json", release.PUBLISHED_VAE_CONFIG)):
        with open(os.path.join(SD15_CONFIG_DIR, subfolder, name)) as handle:
            assert json.load(handle) == published


def test_published_scheduler_config_is_sd15_schedule_with_default_epsilon():
    assert "prediction_type" not in release.PUBLISHED_SCHEDULER_CONFIG
    check_noise_schedule(release.PUBLISHED_SCHEDULER_CONFIG)  # raises if refused


@pytest.mark.parametrize("change, named", [
    ({"prediction_type": "v_prediction"}, "prediction_type"),
    ({"beta_end": 0.02}, "beta_end=0.02"),
    ({"beta_schedule": "linear"}, "beta_schedule='linear'"),
    ({"num_train_timesteps": 500}, "num_train_timesteps=500"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True"),
    ({"trained_betas": [0.001] * 1000}, "trained_betas=given"),
])
def test_a_really_different_schedule_is_refused(change, named):
    with pytest.raises(ValueError, match=f"noise schedule; got .*{named}"):
        check_noise_schedule({**release.PUBLISHED_SCHEDULER_CONFIG, **change})


# --------------------------------------------------------------------------- diffusers folder

def test_published_folder_loads_the_non_ema_unet_and_diffusers_defaults(release_folder, weights):
    loaded = load_diffusion_components(str(release_folder))
    assert same_weights(loaded.unet, weights["non_ema"])
    assert same_weights(loaded.vae, weights["vae"])
    assert loaded.vae.config.scaling_factor == 0.18215  # the published VAE config has none
    assert loaded.noise_scheduler.config.prediction_type == "epsilon"
    assert torch.allclose(loaded.noise_scheduler.betas.double(), sd15_betas(), rtol=1e-6, atol=0)
    assert "non-EMA" in loaded.description and "non_ema" in loaded.description


def test_ema_weights_key_selects_the_main_unet(release_folder, weights):
    loaded = load_diffusion_components(str(release_folder), ema_weights=True)
    assert same_weights(loaded.unet, weights["ema"])
    assert "EMA U-Net" in loaded.description and "non-EMA" not in loaded.description


def test_folder_without_non_ema_variant_uses_the_main_weights_and_says_so(tmp_path, weights):
    folder = release.write_release_folder(tmp_path / "sd", weights["ema"], None, weights["vae"])
    loaded = load_diffusion_components(str(folder))
    assert same_weights(loaded.unet, weights["ema"])
    assert "no non_ema variant" in loaded.description


def test_non_ema_variant_as_bin_only_is_used(tmp_path, weights):
    folder = release.write_release_folder(tmp_path / "sd", weights["ema"], weights["non_ema"], weights["vae"],
                                          non_ema_formats=("bin",))
    assert not (folder / "unet" / "diffusion_pytorch_model.non_ema.safetensors").exists()
    assert same_weights(load_diffusion_components(str(folder)).unet, weights["non_ema"])


# ------------------------------------------------------------------------------ hub id, cached

def test_hub_id_loads_from_the_hub_cache_layout(release_folder, weights, hub_cache, no_downloads):
    snapshot = release.write_hub_cache(hub_cache, release_folder)
    assert os.path.islink(snapshot / "unet" / "diffusion_pytorch_model.non_ema.safetensors")
    loaded = load_diffusion_components(release.REPO_ID)
    assert same_weights(loaded.unet, weights["non_ema"])
    assert loaded.vae.config.scaling_factor == 0.18215
    assert loaded.description.startswith(release.REPO_ID) and str(snapshot) in loaded.description


def test_offline_cache_without_non_ema_uses_main_weights_and_says_why(tmp_path, weights, hub_cache, no_downloads):
    folder = release.write_release_folder(tmp_path / "sd", weights["ema"], None, weights["vae"])
    release.write_hub_cache(hub_cache, folder)
    loaded = load_diffusion_components(release.REPO_ID)  # HF_HUB_OFFLINE=1 in the test session
    assert same_weights(loaded.unet, weights["ema"])
    assert "not cached" in loaded.description and "HF_HUB_OFFLINE" in loaded.description


# --------------------------------------------------------------------------- single files

@pytest.mark.parametrize("name", ["v1-5-pruned.ckpt", "v1-5-pruned.safetensors"])
def test_single_file_gives_its_non_ema_unet_or_on_request_the_ema_one(tmp_path, weights, name):
    configs = release.write_single_file_configs(tmp_path / "configs")
    path = release.write_single_file(tmp_path / name,
                                     release.ldm_state_dict(weights["non_ema"], weights["ema"], weights["vae"]))
    default = load_diffusion_components(str(path), single_file_config=str(configs))
    assert same_weights(default.unet, weights["non_ema"])
    assert same_weights(default.vae, weights["vae"])
    assert "non-EMA U-Net (model.diffusion_model.*)" in default.description
    ema = load_diffusion_components(str(path), ema_weights=True, single_file_config=str(configs))
    assert same_weights(ema.unet, weights["ema"])
    assert "EMA U-Net (model_ema.*)" in ema.description


def test_single_file_with_one_unet_copy_uses_it_and_says_so(tmp_path, weights):
    configs = release.write_single_file_configs(tmp_path / "configs")
    path = release.write_single_file(tmp_path / "v1-5-pruned-emaonly.safetensors",
                                     release.ldm_state_dict(weights["ema"], None, weights["vae"]))
    loaded = load_diffusion_components(str(path), single_file_config=str(configs))
    assert same_weights(loaded.unet, weights["ema"])
    assert "only U-Net copy" in loaded.description


def test_shipped_configs_convert_the_published_single_file_layout():
    """The real-size published configs are what single files are converted against: their U-Net
    has SD1.5's 859,520,964 parameters (built on the meta device)."""
    from dcac_plugin.diffusion import build_diffusion_architecture, count_parameters, load_diffusion_configs

    components = build_diffusion_architecture(load_diffusion_configs(SD15_CONFIG_DIR))
    assert count_parameters(components.unet)["total"] == 859_520_964
    assert components.vae.config.scaling_factor == 0.18215


# ------------------------------------------------------------------------- not cached, no hub

def test_hub_id_missing_offline_fails_at_once_naming_files_and_key(hub_cache, no_downloads):
    with pytest.raises(DiffusionWeightsError) as info:
        load_diffusion_components(release.REPO_ID)
    message = str(info.value)
    assert "HF_HUB_OFFLINE is set" in message and "dcac.diffusion.pretrained" in message
    assert "unet/diffusion_pytorch_model.non_ema.safetensors" in message
    assert "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "\n" not in message


def test_unreachable_hub_is_probed_once_and_fails_without_retries(hub_cache, no_downloads, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    requests = []
    real_session = hub.get_session

    class CountingSession:
        def head(self, url, **kwargs):
            requests.append(url)
            return real_session().head(url, **kwargs)

    monkeypatch.setattr(hub, "get_session", CountingSession)
    for _ in range(2):
        with pytest.raises(DiffusionWeightsError, match=r"http://127\.0\.0\.1:9 cannot be reached"):
            load_diffusion_components(release.REPO_ID)
    assert requests == ["http://127.0.0.1:9"]  # one short request for the whole process, no retries


# ------------------------------------------------------------------- what a dcac run logs first

def test_a_dcac_run_says_what_it_was_built_from(release_folder, weights, data_root, tmp_path, capsys):
    """Built through the launcher from the published release: the log names the CLIP and SD
    sources, the U-Net copy, fine-tuning, condition, trainable counts, precision and cache."""
    from dcac_config.loading import build_config
    from dcac_config.shipped import demo_config_path
    from dcac_plugin.models.clip_reid import build_clip_visual
    from dcac_plugin.run.launcher import prepare

    clip_file = tmp_path / "clip.pt"
    torch.save(build_clip_visual("tiny").state_dict(), clip_file)  # a 14x14-grid tower, as CLIP's files
    cfg = build_config(demo_config_path("dcac"), [
        "data.root", data_root, "data.save_dir", str(tmp_path / "run"), "model.pretrained", "True",
        "dcac.clip_weights", str(clip_file), "dcac.diffusion.pretrained", str(release_folder), "dcac.lora.rank", "4",
        "dcac.condition.temperature", "0.6", "train.amp", "auto"])
    prepared = prepare(cfg)
    log = capsys.readouterr().out
    num_ids = prepared.engine.datamanager.num_train_pids
    reid = sum(p.numel() for p in prepared.model.parameters() if p.requires_grad)
    lora = sum(p.numel() for n, p in prepared.engine.feedback.named_parameters() if "lora_" in n)
    condition = num_ids * release.TINY_PROMPT_DIM
    expected = [
        "dcac run built from:",
        f"  CLIP weights: {clip_file}",
        f"  Stable Diffusion: {release_folder}: non-EMA U-Net (unet/diffusion_pytorch_model.non_ema.*)",
        "  U-Net fine-tuning: lora, rank 4, alpha 1 (scale 0.25)",
        "  Condition: correlation, transform none, tau_c 0.6, lambda 1",
        f"  Trainable parameters: Re-ID model {reid:,}; condition {condition:,}; U-Net {lora:,}; "
        f"total {reid + condition + lora:,}",
        "  Mixed precision: off (train.amp auto, cpu)",
        f"  Latent cache: on ({tmp_path / 'run' / 'latent_cache.pth'})",
    ]
    for line in expected:
        assert line in log, line
