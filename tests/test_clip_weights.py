"""CLIP weights by open_clip tag: read from the caches a download fills, and offline one clear error at once."""
import os

import huggingface_hub
import open_clip
import pytest
import sd_release
import torch
from conftest import refuse_download

from dcac_plugin.models.clip_weights import ClipWeightsError, read_clip_visual_weights, resolve_clip_weights_file

OPENAI_HUB_REPO = "timm/vit_base_patch16_clip_224.openai"  # open_clip's hf_hub entry for ViT-B-16 / openai
OPENAI_URL = open_clip.get_pretrained_cfg("ViT-B-16", "openai")["url"]


@pytest.fixture
def empty_caches(hub_cache, tmp_path, monkeypatch):
    """An empty Hugging Face cache and an empty home (open_clip's ~/.cache/clip) for this test."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return hub_cache


@pytest.fixture
def no_downloads(monkeypatch):
    monkeypatch.setattr(open_clip, "download_pretrained", refuse_download)
    monkeypatch.setattr(open_clip, "create_model", refuse_download)


def tiny_open_clip_state():
    """A whole CLIP model's state dict in open_clip's layout (visual.*, transformer.*, token_embedding ...)."""
    torch.manual_seed(0)
    model = open_clip.model.CLIP(embed_dim=16, vision_cfg={"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                                           "patch_size": 16},
                                 text_cfg={"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 1})
    return model.state_dict()


def test_openai_tag_is_read_from_the_hugging_face_cache(tmp_path, empty_caches, no_downloads):
    state = tiny_open_clip_state()
    download = tmp_path / "download"
    download.mkdir()
    torch.save(state, download / "open_clip_pytorch_model.bin")
    snapshot = sd_release.write_hub_cache(empty_caches, download, repo_id=OPENAI_HUB_REPO)
    assert resolve_clip_weights_file("openai", "ViT-B-16") == str(snapshot / "open_clip_pytorch_model.bin")
    visual = read_clip_visual_weights("openai", "ViT-B-16")
    expected = {key[len("visual."):]: value for key, value in state.items() if key.startswith("visual.")}
    assert visual.keys() == expected.keys() and "token_embedding.weight" not in visual
    assert all(torch.equal(visual[key], expected[key]) for key in expected)


def test_openai_tag_is_read_from_open_clips_own_download_cache(empty_caches, no_downloads):
    path = os.path.join(os.environ["HOME"], ".cache", "clip", os.path.basename(OPENAI_URL))
    os.makedirs(os.path.dirname(path))
    torch.save(tiny_open_clip_state(), path)
    assert resolve_clip_weights_file("openai", "ViT-B-16") == path


def test_missing_tag_offline_fails_at_once_naming_both_addresses_and_the_key(empty_caches, no_downloads):
    with pytest.raises(ClipWeightsError) as info:
        resolve_clip_weights_file("openai", "ViT-B-16")
    message = str(info.value)
    assert "HF_HUB_OFFLINE is set" in message and "dcac.clip_weights" in message
    assert f"https://huggingface.co/{OPENAI_HUB_REPO}/resolve/main/open_clip_pytorch_model.bin" in message
    assert OPENAI_URL in message and "\n" not in message


def test_unreachable_hub_gives_the_same_error_after_one_short_request(empty_caches, no_downloads, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ClipWeightsError, match=r"http://127\.0\.0\.1:9 cannot be reached.*dcac\.clip_weights"):
        resolve_clip_weights_file("openai", "ViT-B-16")


@pytest.mark.parametrize("source, message", [
    ("no-such-tag", r"neither a file nor an open_clip pretrained tag of ViT-B-16 \(tags: openai"),
    ("/models/missing/ViT-B-16.pt", "No such CLIP weights file: /models/missing/ViT-B-16.pt"),
])
def test_wrong_source_is_named_with_the_fix(source, message, empty_caches, no_downloads):
    with pytest.raises(ClipWeightsError, match=message) as info:
        resolve_clip_weights_file(source, "ViT-B-16")
    assert "dcac.clip_weights" in str(info.value)
