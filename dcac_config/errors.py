"""How a ``dcac`` command fails: which errors are the user's to fix and which end a run.

A wrong path, name, key or value is not a bug: its message names the problem and the fix,
so the command ends with that message alone (``dcac: error: ...``, exit status 2), never a
traceback. A command whose work finished but failed a check (a run of a list, an export
that differs from PyTorch) ends the same way with exit status 1. Every such error derives
from :class:`UserError`, defined here where nothing else is imported, so that the entry
point catches them all without knowing the modules that raise them. Anything else is a bug
and keeps its traceback. Ctrl-C and SIGTERM are signals, not errors: :class:`Interrupted`
and :class:`Terminated` keep their places in Python's hierarchy (``except Exception`` does
not catch them) and the entry point ends them with one line too.
"""
from __future__ import annotations


class UserError(Exception):
    """The base of every error that ends a ``dcac`` command with ``dcac: error: <message>``
    and no traceback: the message names the problem and the fix."""


class SetupError(UserError, ImportError):
    """This environment cannot run ``dcac_plugin`` (e.g. an unsupported torchreid), found while a
    command's implementation is imported; the message names what is supported and how to install
    it."""


class UsageError(UserError, ValueError):
    """What a command was given is wrong (a missing file or folder, an unknown name); the
    message names it and the fix."""


class ConfigError(UsageError):
    """A config key or value is wrong; the message names it and the fix."""


class CommandFailed(UserError, RuntimeError):
    """The command did its work but the result failed (exit status 1, not a usage error)."""


class DiskFullError(UsageError):
    """A file could not be written for lack of space (or quota); the message names the folder,
    the space needed and what was kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run: ``state`` says where the run was left (what is on disk), ``advice``
    how to go on. The command ends with them in one line, not a traceback."""

    def __init__(self, state: str, advice: str) -> None:
        super().__init__(f"{state}; {advice}")
        self.state, self.advice = state, advice


class Terminated(SystemExit):
    """SIGTERM (a scheduler or torchrun stopping the job) arrived while a file was being written:
    the partial file is removed and the command ends with exit status 143 (128 + SIGTERM), its
    message saying what was kept."""

    STATUS = 143

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = self.STATUS
        self.message = message


__all__ = ["CommandFailed", "ConfigError", "DiskFullError", "Interrupted", "SetupError", "Terminated", "UsageError",
           "UserError"]
