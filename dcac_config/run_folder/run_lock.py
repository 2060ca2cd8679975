"""One run at a time in a save_dir: a lock file held for the whole run.

Two runs writing into one folder interleave their checkpoints, logs and results.json, and
neither says so. The lock is a file created atomically (``O_CREAT | O_EXCL``: of two runs
starting at once exactly one creates it) that names its owner (pid, host, start time), so
the run that is refused can say who holds the folder. A run killed without cleaning up
(SIGKILL, a node crash) leaves its lock behind: on the same host a lock whose process is
gone is taken over with a note; a lock from another host cannot be checked from here, so
the message says how to remove it.
"""
from __future__ import annotations

import contextlib
import json
import os
import os.path as osp
import socket
import time
from dataclasses import asdict, dataclass
from typing import Iterator, Optional

from dcac_config.errors import UsageError

LOCK_NAME = "run.lock"
# Another run may take a stale lock between our read and our takeover; retrying a few times
# then reports whoever holds it.
ATTEMPTS = 3


@dataclass(frozen=True)
class LockOwner:
    """Who holds a save_dir: the process, its host and when it started."""

    pid: int
    host: str
    started: str

    def describe(self) -> str:
        return f"pid {self.pid}@{self.host}, since {self.started}"


def lock_path(save_dir: str) -> str:
    return osp.join(save_dir, LOCK_NAME)


def this_process() -> LockOwner:
    return LockOwner(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S"))


# Process ids are positive and below 2**22 on Linux (pid_max's ceiling), far below this elsewhere.
MAX_PID = 2 ** 31 - 1


def read_owner(raw: bytes) -> Optional[LockOwner]:
    """The owner a lock file's bytes name, or None when they name none (a file being written,
    not ours, or a pid no process can have)."""
    try:
        fields = json.loads(raw.decode("utf-8"))
        pid = fields["pid"]
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= MAX_PID:
            return None
        return LockOwner(pid, str(fields["host"]), str(fields["started"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def is_stale(owner: LockOwner) -> bool:
    """A lock whose owner is gone: on this host, and its process no longer running (or this
    process itself, which cannot hold it yet: a container restarted with the same pid)."""
    if owner.host != socket.gethostname():
        return False
    return owner.pid == os.getpid() or not pid_alive(owner.pid)


def _create(path: str, owner: LockOwner) -> bool:
    """Create the lock file naming ``owner``; False when it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(asdict(owner), handle)
    return True


def _take_over(path: str, raw: bytes) -> bool:
    """Remove the stale lock whose bytes are ``raw``; False when the file there is no longer
    that one (another run took it over first, or finished with it)."""
    aside = f"{path}.stale-{os.getpid()}"
    try:
        os.rename(path, aside)  # atomic: of two runs taking over, one moves the file
    except FileNotFoundError:
        return False
    with open(aside, "rb") as handle:
        moved = handle.read()
    if moved != raw:  # a fresh lock created since we read: put it back, it is not ours to remove
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    os.remove(aside)
    return moved == raw


def held_error(save_dir: str, owner: Optional[LockOwner]) -> UsageError:
    """The refusal for a folder another run holds, with what the user can do."""
    path = lock_path(save_dir)
    if owner is None:
        return UsageError(f"data.save_dir {save_dir} is locked by {path}, whose owner cannot be read. If no run uses "
                          f"this folder, delete {path} and start again; otherwise set data.save_dir to another folder.")
    if owner.host != socket.gethostname():
        return UsageError(f"data.save_dir {save_dir} is in use by a run on another host ({owner.describe()}; lock "
                          f"file {path}). If that run is no longer running, delete {path} and start again; otherwise "
                          "wait for it to finish or set data.save_dir to another folder.")
    return UsageError(f"data.save_dir {save_dir} is in use by another run ({owner.describe()}; lock file {path}). "
                      "Wait for it to finish, or set data.save_dir to another folder.")


def unreadable_lock_error(save_dir: str, err: OSError) -> UsageError:
    """The refusal for a ``run.lock`` that is no lock file: a folder, or unreadable."""
    path = lock_path(save_dir)
    what = "is a folder, not a lock file" if os.path.isdir(path) else f"cannot be read ({err.strerror or err})"
    return UsageError(f"data.save_dir {save_dir} cannot be locked for this run: {path} {what}. It is not a lock of "
                      f"ours; move or delete {path} and start again, or set data.save_dir to another folder.")


def acquire(save_dir: str) -> str:
    """Create ``save_dir``'s lock for this process (taking over a stale one with a note);
    raises :class:`UsageError` naming the owner when another run holds it. Returns its path."""
    path, me = lock_path(save_dir), this_process()
    owner = None
    for _ in range(ATTEMPTS):
        if _create(path, me):
            return path
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:  # released meanwhile
            continue
        except OSError as err:  # a folder (or anything else) where the lock file goes
            raise unreadable_lock_error(save_dir, err) from None
        owner = read_owner(raw)
        if owner is None or not is_stale(owner):
            break
        if _take_over(path, raw):
            print(f"Note: taking over the lock {path} of a run that is no longer running ({owner.describe()}).")
    raise held_error(save_dir, owner)


def release(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def run_lock(save_dir: str) -> Iterator[str]:
    """Hold ``save_dir``'s lock for the block; released however the block ends (error,
    KeyboardInterrupt). The folder must exist."""
    path = acquire(save_dir)
    try:
        yield path
    finally:
        release(path)


__all__ = ["LOCK_NAME", "LockOwner", "acquire", "lock_path", "release", "run_lock"]
