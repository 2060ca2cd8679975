"""Images whose samples are wider than 8 bits come out right, or are refused naming the file.

PIL's ``convert("RGB")`` clips 16-bit, 32-bit and float samples at 255, so such a picture reads
as a blank white image and training or extraction runs on without a word. Each case writes a real
file with PIL and compares what ``read_image_checked`` returns with the values scaled by hand.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcac_plugin.data.images import ImageReadError, check_image, read_image_checked, scan_images

PACKAGE = Path(__file__).resolve().parents[1] / "dcac_plugin"


def _write(path: Path, pixels: np.ndarray, expected_mode: str) -> str:
    """Save ``pixels`` as one image and check that PIL reads it back in ``expected_mode``."""
    Image.fromarray(pixels).save(path)
    with Image.open(path) as image:
        assert image.mode == expected_mode
    return str(path)


def _grey(path: str) -> list:
    """The one grey row ``read_image_checked`` returns, after checking that it is 8-bit RGB with equal channels."""
    rgb = np.asarray(read_image_checked(path))
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    return rgb[..., 0].tolist()


# 16-bit samples and their 8-bit values, rounded from value * 255 / 65535 by hand.
SIXTEEN_BIT = [0, 128, 129, 257, 32767, 32896, 65535]
SIXTEEN_BIT_AS_8 = [0, 0, 1, 1, 127, 128, 255]


def test_a_16_bit_png_gradient_is_scaled_not_clipped_to_white(tmp_path):
    gradient = np.array([SIXTEEN_BIT] * 2, dtype=np.uint16)
    path = _write(tmp_path / "gradient16.png", gradient, "I;16")
    assert _grey(path) == [SIXTEEN_BIT_AS_8] * 2
    # What PIL alone makes of it: every sample clipped at 255, so all but the darkest are white.
    with Image.open(path) as image:
        assert np.asarray(image.convert("RGB"))[0, :, 0].tolist() == [min(v, 255) for v in SIXTEEN_BIT]


def test_big_endian_16_bit_is_scaled_the_same(tmp_path):
    path = _write(tmp_path / "gradient16b.tif", np.array([SIXTEEN_BIT], dtype=">u2"), "I;16B")
    assert _grey(path) == [SIXTEEN_BIT_AS_8]


def test_32_bit_integers_on_the_16_bit_scale_are_scaled_like_16_bit(tmp_path):
    # Pillow itself puts 16-bit PGM data in mode I, on 0..65535.
    path = _write(tmp_path / "int32.tif", np.array([SIXTEEN_BIT], dtype=np.int32), "I")
    assert _grey(path) == [SIXTEEN_BIT_AS_8]


def test_32_bit_integers_within_0_255_are_taken_as_8_bit(tmp_path):
    path = _write(tmp_path / "int32-8bit.tif", np.array([[0, 17, 128, 255]], dtype=np.int32), "I")
    assert _grey(path) == [[0, 17, 128, 255]]


@pytest.mark.parametrize("values,expected", [
    ([0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),  # 0..1: x 255, rounded (63.75 -> 64, 127.5 -> 128)
    ([0.0, 2.0, 99.6, 255.0], [0, 2, 100, 255]),  # 0..255: as it is, rounded
])
def test_float_images_are_read_on_the_smallest_scale_that_holds_them(tmp_path, values, expected):
    path = _write(tmp_path / "float.tif", np.array([values], dtype=np.float32), "F")
    assert _grey(path) == [expected]


@pytest.mark.parametrize("pixels,reason", [
    (np.array([[0, 70000]], dtype=np.int32), "int32 pixel values in [0, 70000], beyond every scale known here "
                                             "(0..255, 0..65535)"),
    (np.array([[-3, 40]], dtype=np.int32), "int32 pixel values in [-3, 40]"),
    (np.array([[0.0, 300.5]], dtype=np.float32), "float32 pixel values in [0.0, 300.5]"),
    (np.array([[0.5, np.nan]], dtype=np.float32), "pixel values that are not finite (NaN or infinite)"),
])
def test_samples_that_fit_no_scale_are_refused_with_the_file_named(tmp_path, pixels, reason):
    path = str(tmp_path / "odd.tif")
    Image.fromarray(pixels).save(path)
    with pytest.raises(ImageReadError) as caught:
        read_image_checked(path)
    message = str(caught.value)
    assert message.startswith(f'Cannot read image "{path}": {reason}')
    assert "save it as an 8-bit image" in message and "data.skip_corrupt_images" in message
    assert "\n" not in message
    assert check_image(path) == caught.value.reason


@pytest.mark.parametrize("mode", ["L", "P", "LA", "RGBA", "1"])
def test_8_bit_modes_keep_pils_conversion(tmp_path, mode):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"{mode}.png"
    picture.save(path)
    with Image.open(path) as image:
        expected = np.asarray(image.convert("RGB"))
    assert (np.asarray(read_image_checked(str(path))) == expected).all()


def test_cmyk_keeps_pils_conversion(tmp_path):
    path = tmp_path / "cmyk.tif"
    Image.new("CMYK", (4, 3), (10, 200, 30, 5)).save(path)
    with Image.open(path) as image:
        expected = np.asarray(image.convert("RGB"))
    assert (np.asarray(read_image_checked(str(path))) == expected).all()


# ------------------------------------------------------------------ decompression bombs


TOO_LARGE = "too large: over PIL's limit of 100 pixels per image (PIL.Image.MAX_IMAGE_PIXELS"


@pytest.mark.parametrize("side", [11, 15])  # 121 pixels: over the limit; 225: over twice the limit (PIL raises)
def test_images_over_pils_pixel_limit_are_refused_with_the_file_named(tmp_path, monkeypatch, side):
    path = str(tmp_path / "huge.png")
    Image.new("L", (side, side)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # PIL's own, between 1x and 2x
        with pytest.raises(ImageReadError) as caught:
            read_image_checked(path)
        assert scan_images([path], workers=1) == {path: caught.value.reason}
    message = str(caught.value)
    assert message.startswith(f'Cannot read image "{path}": {TOO_LARGE}') and "downscaled copy" in message
    assert "\n" not in message


def test_an_image_at_the_limit_is_read(tmp_path, monkeypatch):
    path = str(tmp_path / "edge.png")
    Image.new("L", (10, 10), 7).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert _grey(path) == [[7] * 10] * 10


# ------------------------------------------------------------------ one reader


def test_every_image_read_of_the_package_goes_through_read_image_checked():
    """Training, evaluation, the PCL memory, the latent cache, extract and gradcam read with it;
    a new ``Image.open`` elsewhere would bypass the checks above."""
    readers = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                     if "Image.open(" in path.read_text(encoding="utf-8"))
    assert readers == ["data/images.py"]
