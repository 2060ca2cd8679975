import os

import pytest
import torch
from PIL import Image

from dcac_plugin.data.views import diffusion_view_transform
from dcac_plugin.diffusion import (DiffusionDenoiser, load_diffusion_components, posterior_parameters,
                                   sample_from_posterior, sample_latents, save_tiny_stable_diffusion)
from dcac_plugin.diffusion.latent_cache import LatentCache, vae_fingerprint


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    return load_diffusion_components(save_tiny_stable_diffusion(str(tmp_path_factory.mktemp("sd") / "tiny")))


@pytest.fixture
def images(tmp_path):
    paths = []
    for i in range(5):
        path = tmp_path / f"img{i}.jpg"
        Image.new("RGB", (64, 128), (40 * i, 255 - 30 * i, 90)).save(path)
        paths.append(str(path))
    return paths


def test_cached_latents_and_loss_equal_encoding_on_the_fly(components, images, tmp_path):
    vae, transform = components.vae, diffusion_view_transform(128)
    cache = LatentCache(str(tmp_path / "cache.pth"), vae_fingerprint(vae, 128))
    assert cache.build(images, vae, transform, batch_size=len(images)) == 5
    pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
    mean, std = cache.lookup(images)
    assert mean.shape == (5, 4, 16, 16) and std.shape == (5, 4, 16, 16)
    on_the_fly = sample_latents(vae, pixels, torch.Generator().manual_seed(3))
    cached = sample_from_posterior(mean, std, torch.Generator().manual_seed(3), vae.config.scaling_factor)
    torch.testing.assert_close(cached, on_the_fly, atol=1e-6, rtol=1e-5)
    assert not torch.equal(mean * vae.config.scaling_factor, cached)  # a sample, not the mode
    denoiser = DiffusionDenoiser(components.unet, vae, components.noise_scheduler)
    condition = torch.randn(5, 1, denoiser.prompt_dim)
    loss_fly = denoiser(pixels, condition, generator=torch.Generator().manual_seed(9))
    generator = torch.Generator().manual_seed(9)
    latents = sample_from_posterior(mean, std, generator, vae.config.scaling_factor)
    loss_cached = denoiser(None, condition, generator=generator, latents=latents)
    torch.testing.assert_close(loss_cached, loss_fly, atol=1e-6, rtol=1e-5)


def test_posteriors_are_encoded_once_in_float32_even_inside_autocast(components, images, tmp_path):
    vae, transform = components.vae, diffusion_view_transform(128)
    pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
    fp32_mean, fp32_std = posterior_parameters(vae, pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_mean, _ = posterior_parameters(vae, pixels)  # what encoding under the run's autocast gives
        cache = LatentCache(str(tmp_path / "cache.pth"), vae_fingerprint(vae, 128))
        assert cache.build(images, vae, transform, batch_size=len(images)) == 5
    assert not torch.equal(low_mean.float(), fp32_mean)
    mean, std = cache.lookup(images)
    assert mean.dtype == std.dtype == torch.float32
    assert torch.equal(mean, fp32_mean) and torch.equal(std, fp32_std)


def test_cache_is_reused_and_invalidated_per_file_and_per_vae(components, images, tmp_path):
    vae, transform = components.vae, diffusion_view_transform(128)
    path = str(tmp_path / "cache.pth")
    fingerprint = vae_fingerprint(vae, 128)
    first = LatentCache(path, fingerprint)
    assert first.build(images, vae, transform) == 5
    assert os.path.isfile(path)
    assert LatentCache(path, fingerprint).build(images, vae, transform) == 0  # from disk, nothing encoded
    before = first.lookup([images[2]])[0].clone()
    Image.new("RGB", (64, 128), (0, 0, 0)).save(images[2])  # new content, new size/mtime
    second = LatentCache(path, fingerprint)
    assert second.build(images, vae, transform) == 1
    assert not torch.equal(second.lookup([images[2]])[0], before)
    torch.testing.assert_close(second.lookup([images[0]])[0], first.lookup([images[0]])[0])
    stat = os.stat(images[3])
    os.utime(images[3], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, newer mtime
    assert LatentCache(path, fingerprint).build(images, vae, transform) == 1
    assert vae_fingerprint(vae, 64) != fingerprint  # another view size is another cache
    other_vae = load_diffusion_components(save_tiny_stable_diffusion(str(tmp_path / "tiny2"), seed=5)).vae
    assert LatentCache(path, vae_fingerprint(other_vae, 128)).build(images, other_vae, transform) == 5


def test_lookup_of_unknown_image_is_a_clear_error(components, images, tmp_path):
    cache = LatentCache(str(tmp_path / "c.pth"), vae_fingerprint(components.vae, 128))
    cache.build(images[:2], components.vae, diffusion_view_transform(128))
    with pytest.raises(KeyError, match="not in the latent cache"):
        cache.lookup([images[4]])
