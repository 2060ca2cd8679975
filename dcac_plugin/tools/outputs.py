"""The files ``dcac extract``, ``export`` and ``visualize`` write: checked before any work.

A tool pointed at an existing file would replace it without a word, and one pointed at a
folder where a file is expected, or into a folder it cannot write, would fail only after loading
the model and doing all the work. All are checked first; an existing output is replaced only
with ``--overwrite``.
"""
from __future__ import annotations

import os
import os.path as osp
import tempfile
from typing import Optional, Sequence

from dcac_config.errors import UsageError


def _unwritable(folder: str) -> Optional[str]:
    """Why no file can be created in ``folder`` (or, while it does not exist, in its nearest existing
    parent, where it would be made), or None when one can: tried with a temporary file."""
    folder = osp.abspath(folder or ".")
    while not osp.exists(folder):
        folder = osp.dirname(folder)
    if not osp.isdir(folder):
        return f"{folder} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test-"):
            return None
    except OSError as err:
        return f"{folder} cannot be written ({err.strerror or err})"


def check_writable(folder: str, option: str) -> None:
    """Refuse, before any work, an output whose folder cannot be written."""
    problem = _unwritable(folder)
    if problem:
        raise UsageError(f"{option}: {problem}. Choose another {option}, in a folder you can write to.")


def check_output_files(paths: Sequence[str], overwrite: bool, option: str) -> None:
    """Refuse outputs that are folders, outputs in folders that cannot be written, and existing
    files unless ``overwrite``; ``option`` names the command-line option that chooses them."""
    for path in paths:
        if osp.isdir(path):
            raise UsageError(f"{option}: {path} is a folder; name the file to write (a new path, e.g. inside it).")
        check_writable(osp.dirname(osp.abspath(path)), option)
    existing = [path for path in paths if osp.exists(path)]
    if existing and not overwrite:
        one = len(existing) == 1
        raise UsageError(f"{', '.join(existing)} already exist{'s' if one else ''}; this command would overwrite "
                         f"{'it' if one else 'them'}. Pass --overwrite to replace {'it' if one else 'them'}, or "
                         f"choose another {option}.")


def check_output_folder(folder: str, overwrite: bool, option: str) -> None:
    """Refuse an output folder that is a file, or that holds files already unless ``overwrite``
    (the files written there are named after their inputs, known only once the work is done)."""
    if osp.isfile(folder):
        raise UsageError(f"{option}: {folder} is a file; name a folder to write into.")
    check_writable(folder, option)
    held = sorted(os.listdir(folder)) if osp.isdir(folder) else []
    if held and not overwrite:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise UsageError(f"{folder} already holds files ({shown}); this command would write over them. Pass "
                         f"--overwrite to write there all the same, or choose another {option}.")


__all__ = ["check_output_files", "check_output_folder", "check_writable"]
