"""The test suite must leave the user's files as it found them: the working tree and the caches.

:func:`snapshot` records every file below some folders (path -> size and modification time);
:func:`changes` lists what was created, changed or deleted between two snapshots. The session
hooks in ``conftest.py`` take one snapshot before the tests and one after, and fail the run
when they differ, naming the files.
"""
from __future__ import annotations

import hashlib
import os
from typing import Dict, Iterable, List, Tuple

Snapshot = Dict[str, Tuple[int, int]]
# What running Python and pytest may write without it being a test's doing.
IGNORED_NAMES = {".git", "__pycache__", ".pytest_cache"}
IGNORED_SUFFIXES = (".egg-info", ".pyc")


def _ignored(name: str) -> bool:
    return name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES)


def snapshot(roots: Iterable[str]) -> Snapshot:
    """Size and mtime of every file below ``roots`` (missing roots are empty)."""
    files: Snapshot = {}
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if not _ignored(d)]
            for name in names:
                if _ignored(name):
                    continue
                path = os.path.join(folder, name)
                try:
                    stat = os.stat(path)
                except OSError:  # a dangling link, or a file gone while walking
                    continue
                files[path] = (stat.st_size, stat.st_mtime_ns)
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


def user_folders(repo_root: str) -> List[str]:
    """The folders the suite must not touch: the working tree (and the current directory, where
    relative ``log/`` and ``reid-data/`` would go) and the user's caches."""
    cache = os.path.join(os.path.expanduser("~"), ".cache")
    folders = [repo_root, os.getcwd()] + [os.path.join(cache, name) for name in
                                           ("dcac-reid", "huggingface", "clip", "torch")]
    return sorted(set(os.path.abspath(folder) for folder in folders))
