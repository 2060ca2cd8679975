"""Files written whole or not at all: checkpoints, exports, features, pictures, configs.

Each write goes to a temporary file in the target's folder, is flushed and fsynced, then renamed
over the target: a crash leaves the old file or the new one, never a truncated one. What can
still go wrong while writing ends in one line, with the partial file removed and the old one
kept:

- a full disk or quota (ENOSPC, EDQUOT): :class:`~dcac_config.errors.DiskFullError` naming the
  folder, the space needed and the space free;
- a folder that cannot be written (EACCES, EPERM, EROFS): a :class:`~dcac_config.errors.UsageError`;
- SIGTERM (a scheduler stopping the job) during the write: Python's default would end the process
  at once and leave the temporary file; here it ends the write first
  (:class:`~dcac_config.errors.Terminated`, exit status 143).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
from typing import Any, BinaryIO, Callable, Iterator, List, Optional

import torch

from dcac_config.errors import DiskFullError, Terminated, UsageError
from dcac_config.run_folder.save_dir import TEMPORARY_PREFIX

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def size_text(size: float) -> str:
    """Bytes as people read them: 512 B, 3.1 MB, 2.4 GB (powers of 1000, as df -H)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def free_space(folder: str) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full_error(path: str, needed: Optional[int], written: int, existed: bool) -> DiskFullError:
    """The one line for a write of ``path`` that ran out of space after ``written`` bytes."""
    folder, name = os.path.dirname(path), os.path.basename(path)
    free = free_space(folder)
    sizes = ([f"about {size_text(needed)} needed"] if needed else
             [f"more than the {size_text(written)} written"] if written else [])
    sizes += [f"{size_text(free)} free"] if free is not None else []
    kept = f"the earlier {name} is unchanged" if existed else "no partial file was left"
    return DiskFullError(f"Disk full: no space left in {folder} while writing {name}"
                         f"{' (' + ', '.join(sizes) + ')' if sizes else ''}; {kept}. Free space on that disk (or write "
                         "to another one) and run again.")


class _RecordedWrites:
    """A file handle that remembers the OSError its writes raised: torch.save's zip writer calls
    ``write`` from C++ and turns a failure there into a RuntimeError ("unexpected pos"), which
    no longer says the disk was full."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


@contextlib.contextmanager
def _sigterm_raises(stopped: List[bool]) -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` (and sets ``stopped[0]``) instead of
    ending the process at once; outside it the process's own SIGTERM handling is back. Only where
    Python's default handling was in force, and in the main thread (the only one that may)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum, frame) -> None:
        stopped[0] = True
        raise Terminated("Terminated (SIGTERM)")

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _failed_write(error: BaseException, path: str, size: Optional[int], written: int, existed: bool,
                  terminated: bool) -> BaseException:
    """What a failed write of ``path`` ends in (the temporary file is gone by now)."""
    name = os.path.basename(path)
    kept = f"the earlier {name} is unchanged" if existed else "no partial file was left"
    if terminated:
        return Terminated(f"Terminated (SIGTERM) while writing {path}: the write was stopped and {kept}.")
    if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
        return disk_full_error(path, size, written, existed)
    if isinstance(error, OSError) and error.errno in DENIED_ERRNOS:
        return UsageError(f"Cannot write {name} into {os.path.dirname(path)}: {error.strerror}; {kept}. Write it to "
                          "a folder you can write to.")
    return error


def atomic_write(path: str, write: Callable[[BinaryIO], None], size: Optional[int] = None) -> str:
    """``write`` into a temporary file in the same folder, fsync, then rename over ``path``:
    a crash leaves either the old file or the new one, never a truncated one. ``size`` (bytes,
    when known) is what a full disk's message says is needed."""
    folder = os.path.dirname(os.path.abspath(path))
    existed = os.path.isfile(path)
    stopped = [False]
    tmp, written, recorded = None, 0, None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, dir=folder)
        with _sigterm_raises(stopped), os.fdopen(fd, "wb") as handle:
            recorded = _RecordedWrites(handle)
            try:
                write(recorded)
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                with contextlib.suppress(OSError, ValueError):
                    written = os.fstat(handle.fileno()).st_size
            # mkstemp makes the file private (0600); give it the mode a plain open() would.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        cause = recorded.error if recorded is not None and recorded.error is not None else error
        failure = _failed_write(cause, path, size, written, existed, stopped[0])
        if failure is cause:
            raise
        raise failure from None
    return path


def payload_size(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts, lists, tuples), each storage once: about
    what ``torch.save`` writes."""
    seen, total, stack = set(), 0, [obj]
    while stack:
        item = stack.pop()
        if torch.is_tensor(item):
            storage = item.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes(), str(item.device))
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def atomic_save(obj: Any, path: str) -> str:
    """``torch.save`` of ``obj`` to ``path``, atomically."""
    return atomic_write(path, lambda handle: torch.save(obj, handle), size=payload_size(obj))


def atomic_copy(source: str, path: str) -> str:
    """A copy of the file ``source`` at ``path``, written atomically."""

    def copy(handle: BinaryIO) -> None:
        with open(source, "rb") as original:
            shutil.copyfileobj(original, handle, length=16 << 20)

    return atomic_write(path, copy, size=os.path.getsize(source))


__all__ = ["TEMPORARY_PREFIX", "atomic_copy", "atomic_save", "atomic_write", "disk_full_error", "payload_size",
           "size_text"]
