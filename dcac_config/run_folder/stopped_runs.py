"""A run that stops before its end (an error, Ctrl-C, SIGTERM, a kill): what it leaves in its
save_dir, and the way on that the message offers, which must work.

- A run that stops before its first checkpoint has nothing to resume, yet its ``config.yaml``
  and event files would make the folder look like a run: the next run into it would be refused,
  and the ``model.resume`` that refusal suggests would fail. So such a run removes the outputs it
  wrote (its log stays, with the error), and the same command starts it again.
- A run with a checkpoint keeps everything; its message names the checkpoint and the
  ``model.resume`` that continues from it.
- A run killed outright (SIGKILL) cannot clean up: the partial checkpoint it was writing stays
  as a ``.tmp-*`` file in ``model/``, removed when the next run starts in that folder (under the
  folder's lock, so no other run is writing there).
"""
from __future__ import annotations

import contextlib
import glob
import os
import os.path as osp
from typing import Collection, Optional, Tuple

from .save_dir import CHECKPOINT_FOLDER, EVENTS_PREFIX, TEMPORARY_PREFIX, checkpoint_paths, run_outputs


def remove_leftover_temporaries(save_dir: str) -> None:
    """Partial checkpoints of a run that was killed while writing one, removed with a note."""
    leftovers = sorted(glob.glob(osp.join(save_dir, CHECKPOINT_FOLDER, TEMPORARY_PREFIX + "*")))
    for path in leftovers:
        with contextlib.suppress(OSError):
            os.remove(path)
    if leftovers:
        print(f"Removed {len(leftovers)} partial checkpoint file(s) left in {osp.join(save_dir, CHECKPOINT_FOLDER)} "
              f"by a run killed while writing ({', '.join(osp.basename(p) for p in leftovers)})")


def _resumable(outputs: Collection[str]) -> bool:
    """Whether a run's outputs hold something to keep: a checkpoint, or results."""
    return any(name.startswith(CHECKPOINT_FOLDER + os.sep) or name == "results.json" for name in outputs)


def config_stamp(save_dir: str) -> Optional[Tuple[int, int]]:
    """What tells whether ``config.yaml`` was (re)written since: its inode and modification time
    (a run writes it atomically, so a new one is a new file); None when there is none."""
    try:
        stat = os.stat(osp.join(save_dir, "config.yaml"))
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def leave_stopped_run(save_dir: str, kept: Collection[str], stamp: Optional[Tuple[int, int]]) -> Tuple[bool, str, str]:
    """Tidy ``save_dir`` after this run stopped. ``kept`` are the outputs that were there before it
    and are not to be replaced (a run it continues), ``stamp`` the :func:`config_stamp` before it.
    Returns (whether this run had started, i.e. written its ``config.yaml``; where it was left;
    how to go on)."""
    if config_stamp(save_dir) in (None, stamp):
        return False, f"the run stopped before it started (it had not written its config.yaml to {save_dir})", \
            "run the same command again"
    outputs = run_outputs(save_dir)
    if _resumable(outputs):
        latest = checkpoint_paths(save_dir)["latest"]
        where = f"its last checkpoint is {latest}" if osp.isfile(latest) else "its checkpoints and results stay"
        return True, f"the run in {save_dir} stopped; {where}", \
            f"run the same command with model.resume {save_dir} to continue from it"
    written = [name for name in outputs if name not in kept]
    for name in written:
        with contextlib.suppress(OSError):
            os.remove(osp.join(save_dir, name))
    return True, (f"the run in {save_dir} stopped before its first checkpoint, so it removed what it had written "
                  f"({_described(written)}; its log stays)"), "run the same command again to start it anew"


def _described(outputs: Collection[str]) -> str:
    """Outputs as a reader knows them: event files by kind, not by their long generated names."""
    events = [name for name in outputs if name.startswith(EVENTS_PREFIX)]
    named = [name for name in outputs if name not in events]
    return ", ".join(named + ([f"{len(events)} TensorBoard event file{'s' if len(events) > 1 else ''}"] if events
                              else []))


def explained(error: BaseException, state: str, advice: str) -> BaseException:
    """``error`` (a user error: one line) with where the run was left and how to go on added
    to its message, so that the way out it offers works."""
    if error.args and isinstance(error.args[0], str):
        message = error.args[0].rstrip()
        error.args = (f"{message}{'' if message.endswith('.') else '.'} {state[0].upper()}{state[1:]}: once this is "
                      f"fixed, {advice}.",) + error.args[1:]
    return error


__all__ = ["config_stamp", "explained", "leave_stopped_run", "remove_leftover_temporaries"]
