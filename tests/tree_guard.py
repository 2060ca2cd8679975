"""The test suite must leave the user's files as it found them: the working tree and the whole HOME.

Two halves:

* :func:`redirect_home` points HOME, the XDG base folders and matplotlib's folder at a session
  temporary folder before anything imports matplotlib, onnxruntime, torch or huggingface_hub, and
  unsets the variables that move a library cache elsewhere: whatever a library keeps "under HOME"
  (onnxruntime's ``~/.cache/Microsoft``, matplotlib's font list, the Hugging Face and torch caches)
  lands there, as it would for a new user, and goes away with it.
* :func:`snapshot` records every file below some folders (path -> size and modification time, from
  one ``lstat``, nothing hashed); :func:`changes` lists what was created, changed or deleted between
  two snapshots. The session hooks in ``conftest.py`` snapshot :func:`user_folders` (the working
  tree, the current directory and the user's whole real HOME) before the tests and after, and fail
  the run when they differ, naming the files.

A walk does not enter what is no test's doing (:data:`IGNORED_NAMES`, :func:`skipped_folders`).
"""
from __future__ import annotations

import hashlib
import os
import site
import sys
import tempfile
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

Snapshot = Dict[str, Tuple[int, int]]
# What git, Python and pytest write next to the user's files, wherever they are, without it being
# a test's doing: a repository's own database, bytecode, pytest's cache, an editable install's metadata.
IGNORED_NAMES = {".git", "__pycache__", ".pytest_cache"}
IGNORED_SUFFIXES = (".egg-info", ".pyc")
# The variable naming folders that a walk of HOME leaves out (os.pathsep-separated), for folders
# that other programs write while the suite runs: an editor's or a browser's state on a desktop.
SKIP_VARIABLE = "DCAC_TEST_GUARD_SKIP"
# Where the session's HOME and the folders that libraries derive from HOME go, relative to the
# session folder: the layout a new user's HOME would have.
REDIRECTED = {
    "HOME": "home",
    "XDG_CACHE_HOME": os.path.join("home", ".cache"),  # pip, torch hub, Hugging Face defaults
    "XDG_CONFIG_HOME": os.path.join("home", ".config"),
    "XDG_DATA_HOME": os.path.join("home", ".local", "share"),
    "XDG_STATE_HOME": os.path.join("home", ".local", "state"),
    "MPLCONFIGDIR": os.path.join("home", ".config", "matplotlib"),  # its config and font-list cache
}
# Variables that move a library's cache out of HOME: unset, so that those caches follow the session's
# HOME too instead of reading or writing the user's (DCAC_CACHE is set again by a session fixture).
UNSET = ("HF_HOME", "HF_HUB_CACHE", "HF_ASSETS_CACHE", "TRANSFORMERS_CACHE", "TORCH_HOME", "DCAC_CACHE")


def _ignored(name: str) -> bool:
    return name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES)


def _walk(root: str, files: Snapshot, stop: frozenset) -> None:
    """Add the files below ``root`` to ``files``, not entering the folders in ``stop`` nor following
    links (a link is recorded as itself: what it points at is either watched where it is or not the
    user's tree)."""
    pending = [root]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except OSError:  # missing, unreadable, or gone while walking
            continue
        with entries:
            for entry in entries:
                if _ignored(entry.name) or entry.path in stop:
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                        continue
                    stat = entry.stat(follow_symlinks=False)
                except OSError:  # a file gone while walking
                    continue
                files[entry.path] = (stat.st_size, stat.st_mtime_ns)


def snapshot(roots: Iterable[str], skipped: Iterable[str] = ()) -> Snapshot:
    """Size and mtime of every file below ``roots`` (missing roots are empty), outside ``skipped``.

    Each folder is walked once: a root inside another (the working tree inside HOME) is walked as
    itself and passed over by the outer walk, so it is seen even when it lies in a skipped folder.
    """
    roots = sorted({os.path.realpath(root) for root in roots})
    stop = frozenset(os.path.realpath(folder) for folder in skipped) | frozenset(roots)
    files: Snapshot = {}
    for root in roots:
        _walk(root, files, stop)
    return files


def changes(before: Snapshot, after: Snapshot) -> List[str]:
    """``created <path>``, ``changed <path>``, ``deleted <path>`` lines, sorted by path."""
    lines = [f"created {path}" for path in after.keys() - before.keys()]
    lines += [f"deleted {path}" for path in before.keys() - after.keys()]
    lines += [f"changed {path}" for path in before.keys() & after.keys() if before[path] != after[path]]
    return sorted(lines, key=lambda line: line.split(" ", 1)[1])


def digests(folder: str, ignored: Tuple[str, ...] = ()) -> Dict[str, str]:
    """{path relative to ``folder``: sha256} of every file below it, those whose name holds one
    of ``ignored`` aside (e.g. ``.log-``: a run that stops appends its error to its log): what
    a test compares to show that nothing of the user's changed, byte for byte."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if any(part in name for part in ignored):
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def user_folders(repo_root: str, home: Optional[str] = None,
                 environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """The folders the suite must not touch: the working tree (and the current directory, where
    relative ``log/`` and ``reid-data/`` would go), the user's whole ``home`` (default: the current
    HOME) and the user's caches where ``environ`` (default: ``os.environ``) puts them, inside HOME
    unless a variable moved them out (then watched there too)."""
    home = home or os.path.expanduser("~")
    environ = os.environ if environ is None else environ
    cache = environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    folders = [repo_root, os.getcwd(), home,
               environ.get("DCAC_CACHE") or os.path.join(cache, "dcac-reid"),
               environ.get("HF_HOME") or os.path.join(cache, "huggingface"),
               os.path.join(home, ".cache", "clip"),  # open_clip's, always under HOME
               environ.get("TORCH_HOME") or os.path.join(cache, "torch")]
    return sorted(set(os.path.abspath(folder) for folder in folders))


def skipped_folders(environ: Optional[Mapping[str, str]] = None, basetemp: Optional[str] = None) -> List[str]:
    """The folders a walk does not enter, wherever they are (e.g. inside HOME), as no test's doing:

    * the Python installation running the suite (``sys.prefix``, ``sys.base_prefix``; a pyenv or
      a virtual environment may live in HOME or in the working tree): Python's and pip's own, which
      a ``pip install`` in another shell changes while the suite runs, and large to walk;
    * the temporary folders (``tempfile.gettempdir()``, pytest's ``--basetemp``): where the tests
      are meant to write, should TMPDIR be inside HOME;
    * the folders named in ``$DCAC_TEST_GUARD_SKIP`` (``os.pathsep``-separated, read from ``environ``):
      for a HOME that other programs write to while the suite runs.
    """
    environ = os.environ if environ is None else environ
    folders = [sys.prefix, sys.base_prefix, sys.exec_prefix, tempfile.gettempdir()]
    folders += [basetemp] if basetemp else []
    folders += [folder for folder in environ.get(SKIP_VARIABLE, "").split(os.pathsep) if folder]
    return sorted(set(os.path.abspath(os.path.expanduser(folder)) for folder in folders))


def redirect_home(session_dir: str) -> None:
    """Point HOME, the XDG base folders and MPLCONFIGDIR at folders inside ``session_dir`` (created),
    unset the variables that move library caches elsewhere, and keep the user's ``pip install
    --user`` packages visible to subprocesses (PYTHONUSERBASE, which would otherwise follow HOME).

    Subprocesses started by the tests inherit all of it. :func:`restore_environment` undoes it.
    """
    os.environ["PYTHONUSERBASE"] = site.getuserbase()  # before HOME changes: it is derived from HOME
    for name in UNSET:
        os.environ.pop(name, None)
    for name, folder in REDIRECTED.items():
        path = os.path.join(session_dir, folder)
        os.makedirs(path, exist_ok=True)  # present, as a user's HOME is: no library falls back elsewhere
        os.environ[name] = path


def restore_environment(saved: Mapping[str, str]) -> None:
    """Make ``os.environ`` equal to ``saved`` again (a copy taken before the session changed it)."""
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value
