"""Opening a run's folder: the checks before any work, the lock held for the whole run, and the
log that copies the console (and the error that ends the run).

:func:`run_output` is what ``dcac train`` runs inside, whether the run starts (the launcher) or is
refused before any model is imported for a dataset folder that is missing (``dcac_cli``): both
print the configuration into the log, leave nothing in a folder created for a run that failed
to start, and keep that log, with its error, in a folder that existed.
"""
from __future__ import annotations

import contextlib
import os
import os.path as osp
import sys
import tempfile
import time
import traceback
from typing import Iterator, List

from yacs.config import CfgNode as CN

from ..errors import ConfigError, Interrupted, Terminated, UserError
from .run_lock import run_lock
from .save_dir import check_save_dir, run_outputs
from .stopped_runs import config_stamp, explained, leave_stopped_run, remove_leftover_temporaries


def show_configuration(cfg: CN) -> None:
    """The configuration, printed first into a run's log."""
    print(f"Show configuration\n{cfg}\n")


class _Tee:
    """Writes to the console and a log file.

    torchreid's ``utils.Logger`` closes the real stdout when it is closed or garbage
    collected, which breaks every print after the first run in one process (``dcac demo``).
    """

    def __init__(self, console, path: str) -> None:
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        self.console, self.file = console, open(path, "a", encoding="utf-8")

    def write(self, text: str) -> None:
        self.console.write(text)
        self.file.write(text)

    def flush(self) -> None:
        self.console.flush()
        self.file.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def tee_stdout(path: str):
    """Copy stdout into ``path`` for the duration of a run, and the error that ends it (the
    CLI prints that only after the copy has stopped)."""
    previous = sys.stdout
    tee = _Tee(previous, path)
    sys.stdout = tee
    try:
        yield
    except BaseException:
        tee.file.write("Run stopped by an error:\n" + traceback.format_exc())
        raise
    finally:
        sys.stdout = previous
        tee.file.close()


def ensure_writable(folder: str) -> None:
    """Fail before any work when the log and checkpoint folder cannot be written."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"Cannot write logs and checkpoints to data.save_dir {folder!r} ({err.strerror or err}). "
                          "Set data.save_dir to a writable folder.") from None


def run_config_path(save_dir: str) -> str:
    """``config.yaml``: written when a run starts, it is what makes a folder a run (what
    ``dcac extract / export / visualize`` rebuild the model from)."""
    return osp.join(save_dir, "config.yaml")


def missing_folders(path: str) -> List[str]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    path = osp.abspath(path)
    while not osp.exists(path):
        missing.append(path)
        path = osp.dirname(path)
    return missing


def remove_failed_start(log_path: str, created: List[str]) -> None:
    """The log of a run that failed before it started, and the folders made for it (only while
    empty: anything else put there stays)."""
    with contextlib.suppress(OSError):
        os.remove(log_path)
    for folder in created:
        try:
            os.rmdir(folder)
        except OSError:
            return


@contextlib.contextmanager
def run_output(cfg: CN, is_main: bool = True) -> Iterator[List[str]]:
    """Rank 0 prints and logs to ``<save_dir>/train.log-<time>``, the error that ends the run
    included; other ranks stay quiet.

    A run that fails before it starts (no ``config.yaml`` written: missing data or weights, a
    bad value found while building) in a save_dir it created leaves nothing there: the error
    is on the console, and an empty-handed folder would only be litter (``dcac experiments``
    would leave one per run of a list). In a folder that existed, its log stays, with the error.

    Rank 0 (``is_main``) holds the save_dir's lock for the whole run and, under it, checks that
    the folder holds no other run (:func:`~dcac_config.run_folder.save_dir.check_save_dir`); the
    other ranks of the job check too, and take no lock. A refused run writes nothing there, not even its log.
    Yields the earlier outputs this run replaces (``data.overwrite``; deleted when it starts).
    """
    if not is_main:
        replaced = check_save_dir(cfg)
        os.environ["TQDM_DISABLE"] = "1"
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield replaced
        return
    save_dir = cfg.data.save_dir
    created = missing_folders(save_dir)
    log_name = ("test.log" if cfg.test.evaluate else "train.log") + time.strftime("-%Y-%m-%d-%H-%M-%S")
    log_path = osp.join(save_dir, log_name)
    started = False
    try:
        ensure_writable(save_dir)
        with run_lock(save_dir):
            replaced = check_save_dir(cfg)
            kept, stamp = set(run_outputs(save_dir)) - set(replaced), config_stamp(save_dir)
            remove_leftover_temporaries(save_dir)
            with tee_stdout(log_path):
                try:
                    yield replaced
                except BaseException as err:
                    started, state, advice = leave_stopped_run(save_dir, kept, stamp)
                    raise stopped_error(err, started, state, advice)
    except BaseException:
        if created and not started:
            remove_failed_start(log_path, created)
        raise


def stopped_error(err: BaseException, started: bool, state: str, advice: str) -> BaseException:
    """What ends a run that stopped: Ctrl-C as :class:`Interrupted` (where the run was left, how
    to go on); SIGTERM during a write and a user error that came once the run had started, with
    the same added; anything else (a bug) as it is."""
    if isinstance(err, KeyboardInterrupt):
        return err if isinstance(err, Interrupted) else Interrupted(state, advice)
    if isinstance(err, Terminated):
        return Terminated(f"{err.message} {state[0].upper()}{state[1:]}; {advice}.")
    if started and isinstance(err, UserError):
        return explained(err, state, advice)
    return err


__all__ = ["ensure_writable", "missing_folders", "remove_failed_start", "run_config_path", "run_output",
           "show_configuration", "stopped_error", "tee_stdout"]
