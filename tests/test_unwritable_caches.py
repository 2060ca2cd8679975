"""Folders written without a command-line option naming them (DCAC_CACHE, the data root, the Hugging
Face and torch caches under HOME): when one cannot be written, one line names it and how to move it.

The tests run as root, which ignores file permissions, so an unwritable folder is made the way that
fails for root too: a path below a regular file (NotADirectoryError, a real failure of the writer).
"""
import pytest
from conftest import refuse_download

from dcac_config.errors import UsageError
from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path
from dcac_plugin.cli import main
from dcac_plugin.data.synthetic import ensure_synthetic_dataset


@pytest.fixture
def blocked(tmp_path):
    """A folder path that nobody, root included, can create: its parent is a regular file."""
    (tmp_path / "file.txt").write_text("not a folder")
    return tmp_path / "file.txt" / "sub"


# -------------------------------------------------------------- DCAC_CACHE


def test_unwritable_dcac_cache_names_the_variable(blocked, monkeypatch):
    from dcac_plugin.engines.dcac import resolve_diffusion_source

    monkeypatch.setenv("DCAC_CACHE", str(blocked))
    with pytest.raises(UsageError) as info:
        resolve_diffusion_source("tiny")
    assert str(info.value) == (f"Cannot write the generated tiny diffusion model to {blocked}/tiny-stable-diffusion: "
                               f"Not a directory ({blocked}). Set DCAC_CACHE=/a/writable/folder (it is {blocked} now).")


def test_unset_dcac_cache_under_an_unwritable_home_names_both(blocked, monkeypatch):
    from dcac_plugin.engines.dcac import resolve_diffusion_source

    monkeypatch.delenv("DCAC_CACHE")
    monkeypatch.setenv("HOME", str(blocked))
    with pytest.raises(UsageError) as info:
        resolve_diffusion_source("tiny")
    assert str(info.value) == (
        f"Cannot write the generated tiny diffusion model to {blocked}/.cache/dcac-reid/tiny-stable-diffusion: Not a "
        f"directory ({blocked}). DCAC_CACHE is unset, so it is ~/.cache/dcac-reid under HOME ({blocked}): set "
        "DCAC_CACHE=/a/writable/folder (or HOME).")


def test_dcac_run_with_an_unwritable_cache_ends_with_one_line(blocked, data_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DCAC_CACHE", str(blocked))
    code = main(["train", "--config-file", demo_config_path("dcac"), "--root", data_root,
                 "data.save_dir", str(tmp_path / "run"), "train.max_epoch", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [f"dcac: error: Cannot write the generated tiny diffusion model to {blocked}/"
                                f"tiny-stable-diffusion: Not a directory ({blocked}). Set DCAC_CACHE=/a/writable/folder "
                                f"(it is {blocked} now)."]


# -------------------------------------------------------------- data root


def test_synthetic_data_in_an_unwritable_root_names_the_root_option(blocked):
    with pytest.raises(UsageError) as info:
        ensure_synthetic_dataset(blocked, "synthetic_a")
    assert str(info.value) == (f"Cannot write synthetic dataset 'synthetic_a' to {blocked}/synthetic_a: Not a directory "
                               f"({blocked}). It is generated in the data root: pass --root /a/writable/folder "
                               "(data.root in a config).")


def test_demo_with_an_unwritable_root_ends_with_one_line(blocked, tmp_path, capsys):
    code = main(["demo", "--engines", "baseline", "--root", str(blocked), "--save-dir", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [f"dcac: error: Cannot write synthetic dataset 'synthetic_a' to {blocked}/synthetic_a: "
                                f"Not a directory ({blocked}). It is generated in the data root: pass --root "
                                "/a/writable/folder (data.root in a config)."]


# -------------------------------------------------------------- caches under HOME


@pytest.fixture
def hub_cache_blocked(blocked, tmp_path, monkeypatch):
    """The Hugging Face cache below a file, the hub reachable (as far as the code can tell), HF_HOME unset
    and an empty HOME (no cached weights from the machine's own caches)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(blocked))
    for variable in ("HF_HOME", "HF_HUB_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return blocked


def hub_fix(blocked, tmp_path):
    return (f"Not a directory ({blocked}). HF_HOME is unset, so it is ~/.cache/huggingface/hub under HOME "
            f"({tmp_path / 'home'}): set HF_HOME=/a/writable/folder (or HOME).")


def test_clip_download_into_an_unwritable_hub_cache_names_hf_home_before_downloading(hub_cache_blocked, tmp_path,
                                                                                       monkeypatch):
    import open_clip

    from dcac_plugin.models import clip_weights

    monkeypatch.setattr(clip_weights, "hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(open_clip, "download_pretrained", refuse_download)
    with pytest.raises(UsageError) as info:
        clip_weights.resolve_clip_weights_file("openai", "ViT-B-16")
    message = str(info.value)
    assert message.startswith(f"Cannot write CLIP ViT-B-16 weights 'openai' to {hub_cache_blocked}: "
                              + hub_fix(hub_cache_blocked, tmp_path) + " Or download https://")
    assert message.endswith("then set dcac.clip_weights /path/to/that/file (or model.pretrained False for a random "
                            "initialisation).")


def test_stable_diffusion_download_into_an_unwritable_hub_cache_names_hf_home(hub_cache_blocked, tmp_path,
                                                                             monkeypatch):
    import huggingface_hub

    from dcac_plugin.diffusion import sources

    monkeypatch.setattr(sources, "hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", refuse_download)
    with pytest.raises(UsageError) as info:
        sources.hub_diffusers_folder("someone/stable-diffusion", ema_weights=False)
    assert str(info.value).startswith(f"Cannot write Stable Diffusion 'someone/stable-diffusion' to {hub_cache_blocked}: "
                                      + hub_fix(hub_cache_blocked, tmp_path) + " Could not load Stable Diffusion")


def test_torchreid_pretrained_weights_into_an_unwritable_torch_home_name_torch_home(blocked, monkeypatch):
    from dcac_plugin.run.launcher import build_model

    monkeypatch.setenv("TORCH_HOME", str(blocked))
    cfg = build_config(demo_config_path("softmax"), ["model.pretrained", "True"])
    with pytest.raises(UsageError) as info:
        build_model(cfg, 5, "softmax", use_gpu=False)
    assert str(info.value) == (f"Cannot write torchreid's pretrained osnet_x0_25 weights to {blocked}: Not a directory "
                               f"({blocked}). Set TORCH_HOME=/a/writable/folder (it is {blocked} now). Or set "
                               "model.pretrained False.")
