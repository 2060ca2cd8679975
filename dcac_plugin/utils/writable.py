"""Folders the package writes into on its own: when one cannot be written, say which setting moves it.

Besides ``data.save_dir``, a run writes where no option of the command names the place: the
tiny demo diffusion model under ``DCAC_CACHE``, the synthetic datasets under the data root,
downloaded weights in the Hugging Face and torch caches under ``HOME``. A read-only or
misconfigured folder there would surface as a ``PermissionError`` traceback from deep inside
the writer; these helpers turn it into one line naming the path and the variable or key to set.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from typing import ContextManager, Iterator

from dcac_config.errors import UsageError

# What a folder that cannot be written raises (a missing package file, ENOENT, is a bug and stays one).
WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.ENOSPC, errno.EDQUOT})


@contextlib.contextmanager
def writing(what: str, path: str, fix: str) -> Iterator[None]:
    """Run the body, which writes ``what`` to ``path``; a write failure becomes a :class:`UsageError`
    naming both and ``fix`` (the variable or key that moves ``path``)."""
    try:
        yield
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        where = f" ({err.filename})" if err.filename else ""
        raise UsageError(f"Cannot write {what} to {path}: {err.strerror}{where}. {fix}") from None


def ensure_writable_folder(folder: str, what: str, fix: str) -> None:
    """Create ``folder`` if needed and write a file in it, before a long write (a download) starts."""
    with writing(what, folder, fix):
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test-"):
            pass


def environment_fix(variable: str, default: str) -> str:
    """How to move a folder chosen by environment ``variable``, or by HOME when it is unset (``default``)."""
    if os.environ.get(variable):
        return f"Set {variable}=/a/writable/folder (it is {os.environ[variable]} now)."
    return (f"{variable} is unset, so it is {default} under HOME ({os.path.expanduser('~')}): set "
            f"{variable}=/a/writable/folder (or HOME).")


def writing_torch_cache(what: str) -> ContextManager[None]:
    """:func:`writing` into torch's download cache ($TORCH_HOME), where torchreid keeps the ImageNet
    weights its models start from."""
    import torch.hub

    return writing(what, os.path.dirname(torch.hub.get_dir()),
                   f"{environment_fix('TORCH_HOME', '~/.cache/torch')} Or set model.pretrained False.")


__all__ = ["WRITE_ERRNOS", "ensure_writable_folder", "environment_fix", "writing", "writing_torch_cache"]
