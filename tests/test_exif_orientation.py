"""Images stored rotated or mirrored with an EXIF Orientation tag are read upright, by every
pass that reads images: training and test loaders, extraction, GradCAM (torchreid's
``read_image`` ignores the tag); caches of what was read change with the reading."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import dcac_cli
from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path
from dcac_plugin.data.images import read_image_checked
from dcac_plugin.data.synthetic import ensure_synthetic_dataset
from dcac_plugin.tools.extract import load_features

ORIENTATION = 0x0112

# How the stored pixels relate to the upright picture for each EXIF orientation (EXIF 2.3,
# tag 0x0112: 6 = the viewer turns the stored picture 90 degrees clockwise, so it is stored
# turned 90 degrees counter-clockwise, ...), written out here rather than taken from PIL.
STORED = {
    1: lambda up: up,
    2: lambda up: up[:, ::-1],
    3: lambda up: up[::-1, ::-1],
    4: lambda up: up[::-1],
    5: lambda up: up.transpose(1, 0, 2),
    6: lambda up: np.rot90(up, 1),
    7: lambda up: np.rot90(up, 2).transpose(1, 0, 2),
    8: lambda up: np.rot90(up, -1),
}


def upright_pixels(height=128, width=64):
    """A picture whose every row and column differs, so that any turn or mirror shows."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 4) % 256, (y * 2) % 256, ((x + 3 * y) * 3) % 256], -1).astype(np.uint8)
    pixels[10:40, 20:44] = (200, 30, 30)
    return pixels


def save_with_orientation(pixels, path, orientation, **options):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(np.ascontiguousarray(STORED[orientation](pixels))).save(path, exif=exif.tobytes(), **options)
    return str(path)


@pytest.fixture
def jpeg_pair(tmp_path):
    """An upright JPEG and a copy stored sideways with Orientation 6, as a phone writes a portrait photo."""
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = upright_pixels()
    Image.fromarray(pixels).save(folder / "a_upright.jpg", quality=100, subsampling=0)
    save_with_orientation(pixels, folder / "b_sideways.jpg", 6, quality=100, subsampling=0)
    return folder


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_is_read_upright(orientation, tmp_path):
    pixels = upright_pixels()
    path = save_with_orientation(pixels, tmp_path / "stored.png", orientation)  # lossless: exact pixels
    assert Image.open(path).getexif()[ORIENTATION] == orientation
    np.testing.assert_array_equal(np.asarray(read_image_checked(path)), pixels)


def test_a_sideways_jpeg_reads_as_its_upright_copy(jpeg_pair):
    with Image.open(jpeg_pair / "b_sideways.jpg") as stored:
        assert stored.size == (128, 64)  # stored sideways: wider than tall
    upright = np.asarray(read_image_checked(str(jpeg_pair / "a_upright.jpg")), dtype=np.int16)
    sideways = np.asarray(read_image_checked(str(jpeg_pair / "b_sideways.jpg")), dtype=np.int16)
    assert sideways.shape == upright.shape == (128, 64, 3)
    # Both files are JPEGs at quality 100, each compressed in its own orientation: a few levels apart.
    assert np.abs(sideways - upright).max() <= 4


def test_extracted_features_of_a_sideways_jpeg_equal_the_upright_ones(baseline_run, jpeg_pair, tmp_path):
    out = tmp_path / "features.safetensors"
    assert dcac_cli.main(["extract", baseline_run, str(jpeg_pair), "--output", str(out), "--device", "cpu"]) == 0
    features, paths = load_features(str(out))
    assert [os.path.basename(path) for path in paths] == ["a_upright.jpg", "b_sideways.jpg"]
    # Read as stored (sideways, squeezed into 128x64) the cosine was 0.77; JPEG rounding leaves 1 - 1e-4.
    assert float(features[0] @ features[1]) > 0.9999


def test_gradcam_rows_of_a_sideways_image_and_its_upright_copy_are_the_same(baseline_run, tmp_path):
    pixels = upright_pixels()
    upright = save_with_orientation(pixels, tmp_path / "upright.png", 1)
    sideways = save_with_orientation(pixels, tmp_path / "sideways.png", 6)
    from dcac_plugin.tools.visualize import save_gradcam_grid

    out = save_gradcam_grid(baseline_run, [upright, sideways], 3, str(tmp_path / "cam.png"))
    grid = np.asarray(Image.open(out))
    first, second = np.split(grid, 2, axis=0)
    np.testing.assert_array_equal(first, second)


def test_training_and_test_loaders_read_upright(data_root, tmp_path):
    """torchreid builds the datasets; the loaders the run uses read through read_image_checked,
    not torchreid's read_image, in training and in the query/gallery passes alike."""
    from dcac_plugin.run.launcher import build_datamanager

    ensure_synthetic_dataset(data_root, "synthetic_a")
    root = tmp_path / "data"
    shutil.copytree(os.path.join(data_root, "synthetic_a"), root / "synthetic_a")
    turned = {}
    for split in ("bounding_box_train", "query"):
        path = str(sorted((root / "synthetic_a" / split).glob("*.jpg"))[0])
        turned[path] = np.asarray(read_image_checked(path))
        save_with_orientation(turned[path], path, 6, quality=100, subsampling=0)
    cfg = build_config(demo_config_path("baseline"), ["data.root", str(root), "data.targets", "['synthetic_a']",
                                                      "data.workers", "0"])
    manager = build_datamanager(cfg, use_gpu=False)
    datasets = [manager.train_loader.dataset] + [loader.dataset for splits in manager.test_loader.values()
                                                 for loader in splits.values()]
    seen = 0
    for dataset in datasets:
        dataset.transform = None  # the picture as read, before any augmentation
        for index, item in enumerate(dataset.data):
            if item[0] in turned:
                image = np.asarray(dataset[index]["img"], dtype=np.int16)
                assert image.shape == turned[item[0]].shape
                assert np.abs(image - turned[item[0]]).max() <= 4
                seen += 1
    assert seen == 2


def test_the_latent_cache_is_rebuilt_when_the_reading_changes(monkeypatch):
    from diffusers import AutoencoderKL

    from dcac_plugin.diffusion import latent_cache

    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8)
    before = latent_cache.vae_fingerprint(vae, 128)
    monkeypatch.setattr(latent_cache, "READING", "8-bit RGB, as stored")
    assert latent_cache.vae_fingerprint(vae, 128) != before
