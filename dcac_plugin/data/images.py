"""Image reading that fails fast, and a pre-flight scan for unreadable images.

torchreid's ``utils.read_image`` retries forever in a ``while`` loop when PIL raises an
``IOError`` ("Will redo. Don't worry. Just chill."), so one corrupt, truncated or empty file
hangs a whole run instead of failing. Here an unreadable image is read exactly once and raises
:class:`ImageReadError`, which names the file, what is wrong with it and how to fix it.
:func:`scan_images` finds every unreadable image of a dataset up front, so a run can either stop
before training or (with ``data.skip_corrupt_images``) drop them with one warning.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Mapping, Optional, Sequence

from PIL import Image
from tqdm import tqdm

_FIX = ("remove or replace the file, or set data.skip_corrupt_images True to skip unreadable "
        "images with a warning")

# What PIL raises for undecodable data: OSError (UnidentifiedImageError, "image file is
# truncated"), SyntaxError (e.g. "broken PNG file" during load), EOFError (some plugins on a
# short read). torchreid only catches IOError, so the other two crash instead of hanging.
_DECODE_ERRORS = (OSError, SyntaxError, EOFError)


class ImageReadError(RuntimeError):
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
    def for_file(cls, path: str, reason: str) -> ImageReadError:
        """The error for ``path``, with the problem and the fix in its message."""
        return cls(f'Cannot read image "{path}": {reason}. Fix: {_FIX}.', path=path, reason=reason)


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


def read_image_checked(path: str) -> Image.Image:
    """Read ``path`` as an RGB image, decoding it fully; raise :class:`ImageReadError` if that fails.

    Never retries. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left off so that a
    truncated JPEG is reported instead of being padded with grey.
    """
    try:
        # ``with`` closes the file even when decoding fails; convert() forces the full decode
        # and returns an image that no longer needs the file.
        with Image.open(path) as image:
            return image.convert("RGB")
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


__all__ = ["ImageReadError", "check_image", "drop_unreadable", "format_unreadable", "read_image_checked",
           "scan_images"]
