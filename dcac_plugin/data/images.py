"""Image reading that fails fast, and a pre-flight scan for unreadable images.

torchreid's ``utils.read_image`` retries forever in a ``while`` loop when PIL raises an
``IOError`` ("Will redo. Don't worry. Just chill."), so one corrupt, truncated or empty file
hangs a whole run instead of failing. Here an unreadable image is read exactly once and raises
:class:`ImageReadError`, which names the file, what is wrong with it and how to fix it.
:func:`scan_images` finds every unreadable image of a dataset up front, so a run can either stop
before training or (with ``data.skip_corrupt_images``) drop them with one warning.

Every image is turned upright as its EXIF orientation tag says (:func:`upright`; phones and
some cameras store a portrait photo sideways with Orientation 6 or 8), which torchreid's
``read_image`` ignores: training, evaluation, the PCL memory pass, the latent cache, extraction
and GradCAM all read through :func:`read_image_checked`, so they see the same upright picture.

Every image becomes 8-bit RGB. PIL's ``convert("RGB")`` is right for 8-bit modes (L, P, LA, PA,
RGBA, CMYK, 1, YCbCr...: alpha is dropped, not blended) but clips wider samples at 255, so a
16-bit PNG comes out almost all white; those modes are scaled instead (:func:`_to_rgb`). An
image over PIL's decompression-bomb limit is refused rather than decoded.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from dcac_config.errors import UserError

_FIX = ("remove or replace the file, or set data.skip_corrupt_images True to skip unreadable "
        "images with a warning")

# What PIL raises for undecodable data: OSError (UnidentifiedImageError, "image file is
# truncated"), SyntaxError (e.g. "broken PNG file" during load), EOFError (some plugins on a
# short read). torchreid only catches IOError, so the other two crash instead of hanging.
_DECODE_ERRORS = (OSError, SyntaxError, EOFError)


class ImageReadError(UserError, RuntimeError):
    """An image file that cannot be decoded; ``path`` and ``reason`` say which and why.

    Build it with :meth:`for_file`. The constructor takes the bare message as its only positional
    argument because torch's DataLoader re-raises a worker's exception as ``type(msg)``: with any
    other signature it would arrive in the main process as a plain RuntimeError.
    """

    def __init__(self, message: str, *, path: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason

    @classmethod
    def for_file(cls, path: str, reason: str, fix: str = _FIX) -> ImageReadError:
        """The error for ``path``, with the problem and the fix in its message (by default that of a
        run, which can skip unreadable images; a tool that cannot passes its own)."""
        return cls(f'Cannot read image "{path}": {reason}. Fix: {fix}.', path=path, reason=reason)


def _reason(path: str, error: BaseException) -> str:
    """A short, human reason for ``error`` raised while reading ``path``."""
    # The OSError subclasses first: they are about the file system, not the image data.
    if isinstance(error, FileNotFoundError):
        return "missing (no such file)"
    if isinstance(error, IsADirectoryError):
        return "not a file (it is a directory)"
    if isinstance(error, PermissionError):
        return "not readable (permission denied)"
    try:
        empty = os.path.getsize(path) == 0
    except OSError:  # deleted between the failed read and this check
        empty = False
    if empty:
        return "empty file (0 bytes)"
    return f"truncated or corrupt: {error}"


class _Unusable(ValueError):
    """An image that decodes but whose pixels cannot be made 8-bit RGB faithfully; the message says why."""


def _too_large() -> _Unusable:
    """PIL's guard against decompression bombs (``Image.MAX_IMAGE_PIXELS``): a Re-ID image that
    large is no person crop, and decoding it would take gigabytes in every loader worker."""
    return _Unusable(f"too large: over PIL's limit of {Image.MAX_IMAGE_PIXELS} pixels per image "
                     "(PIL.Image.MAX_IMAGE_PIXELS, its decompression-bomb guard); use a downscaled copy")


def _check_size(image: Image.Image) -> None:
    """Refuse an image over PIL's limit: PIL itself raises only above twice the limit and merely
    warns between the two."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        raise _too_large()


# The full scale of each wide sample type. I;16 (any byte order) declares 16 bits per sample, so
# 65535 is white. I (32-bit) and F (float) declare no scale: Pillow puts 16-bit PGM data (scaled
# to 0..65535) in I, while an int32 or float array saved from numpy is usually on the 8-bit scale,
# or 0..1 for floats. Their scale is the smallest of these that holds every value: a fixed scale
# keeps brightness comparable across images (stretching each image to its own range would not),
# and choosing by the values can only misjudge an image that is all but black on the larger scale.
_SIXTEEN_BIT = (65535,)
_FULL_SCALES = {"I": (255, 65535), "F": (1.0, 255.0)}


def _full_scales(mode: str) -> Optional[tuple]:
    """The candidate full scales of a wide-sample mode, or None for modes PIL converts correctly."""
    if mode.startswith("I;16"):
        return _SIXTEEN_BIT
    return _FULL_SCALES.get(mode)


def _to_8bit(samples: np.ndarray, scales: tuple) -> np.ndarray:
    """Grey ``samples`` scaled to 0..255 from the smallest full scale in ``scales`` that holds them."""
    if not np.isfinite(samples).all():
        raise _Unusable("pixel values that are not finite (NaN or infinite); save it as an 8-bit image")
    low, high = samples.min(), samples.max()
    scale = next((s for s in scales if high <= s), None)
    if low < 0 or scale is None:
        raise _Unusable(f"{samples.dtype} pixel values in [{low}, {high}], beyond every scale known here "
                        f"({', '.join(f'0..{s}' for s in scales)}), so their brightness is unknown; "
                        "save it as an 8-bit image")
    return np.rint(samples.astype(np.float64) * (255 / scale)).astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB: wide grey samples (I;16, I, F) scaled to 0..255 (see ``_FULL_SCALES``),
    every other mode by PIL's ``convert``. Raises ``_Unusable`` for samples that fit no scale."""
    scales = _full_scales(image.mode)
    if scales is None:
        return image.convert("RGB")
    return Image.fromarray(_to_8bit(np.asarray(image), scales), "L").convert("RGB")


# What read_image_checked makes of a file, by name: it changes when the pixels it returns for
# the same file change (as when EXIF orientation came in), so that caches of what was read
# (the latent cache's VAE posteriors) are rebuilt.
READING = "8-bit RGB, EXIF orientation applied"

# The EXIF tag saying how the stored pixels must be turned to be seen upright (1: as stored;
# 2-8: mirrored and/or rotated).
EXIF_ORIENTATION = 0x0112


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says (PIL's ``ImageOps.exif_transpose``), or
    itself when it has no such tag (no copy): a Re-ID crop stored sideways would otherwise be
    read sideways, its feature far from the upright crop's."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block: the pixels as stored, as every reader before this one
        return image
    if orientation not in range(2, 9):
        return image
    return ImageOps.exif_transpose(image)


def read_image_checked(path: str) -> Image.Image:
    """Read ``path`` as an upright (:func:`upright`) 8-bit RGB image, decoding it fully; raise
    :class:`ImageReadError` if that fails, if its samples fit no known scale (:func:`_to_rgb`) or
    if it is over PIL's decompression-bomb limit.

    Never retries. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left off so that a
    truncated JPEG is reported instead of being padded with grey.
    """
    try:
        # ``with`` closes the file even when decoding fails; _to_rgb() forces the full decode
        # and returns an image that no longer needs the file.
        with Image.open(path) as image:
            _check_size(image)
            return _to_rgb(upright(image))
    except Image.DecompressionBombError:
        raise ImageReadError.for_file(path, str(_too_large())) from None
    except _Unusable as unusable:
        raise ImageReadError.for_file(path, str(unusable)) from None
    except _DECODE_ERRORS as error:
        raise ImageReadError.for_file(path, _reason(path, error)) from error


def check_image(path: str) -> Optional[str]:
    """The reason ``path`` cannot be read as an image, or None if it decodes fully."""
    try:
        read_image_checked(path)
    except ImageReadError as error:
        return error.reason
    return None


def scan_images(paths: Sequence[str], workers: int = 4, desc: str = "Checking images") -> Dict[str, str]:
    """Fully decode every distinct path and return ``{path: reason}`` for the unreadable ones.

    Decoding runs in a thread pool (PIL releases the GIL while decoding). Results follow the
    order in which paths first appear in ``paths``, whatever order the threads finish in.
    """
    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # map() yields in submission order, which keeps the result deterministic.
        reasons = list(tqdm(pool.map(check_image, unique), total=len(unique), desc=desc,
                            unit="img", leave=False))
    return {path: reason for path, reason in zip(unique, reasons) if reason is not None}


def drop_unreadable(items: Sequence[tuple], bad: Mapping[str, str]) -> List[tuple]:
    """The torchreid items ``(path, pid, camid, dsetid)`` whose path is not in ``bad``, in order."""
    return [item for item in items if item[0] not in bad]


def format_unreadable(bad: Mapping[str, str], limit: int = 5) -> str:
    """A one-paragraph warning listing the first ``limit`` unreadable images and their reasons."""
    shown = [f"{path} ({reason})" for path, reason in list(bad.items())[:limit]]
    more = len(bad) - len(shown)
    listing = ", ".join(shown) + (f", ... and {more} more" if more > 0 else "")
    return f"Skipping {len(bad)} unreadable image(s) (data.skip_corrupt_images True): {listing}"


__all__ = ["READING", "ImageReadError", "check_image", "drop_unreadable", "format_unreadable", "read_image_checked",
           "scan_images", "upright"]
