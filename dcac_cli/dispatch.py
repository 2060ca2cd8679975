"""The ``dcac`` entry point: parse with the standard library, then import and run the command.

All of a command's failures that the user can fix end here, in one form: ``dcac: error:
<message>`` on stderr and exit status 2 (a failed run or export check: status 1), no traceback;
so does an environment ``dcac_plugin`` cannot run in (:class:`~dcac_config.errors.SetupError`):
every such error derives from :class:`~dcac_config.errors.UserError`. A
command stopped by Ctrl-C ends with one line saying what was interrupted and how to go on
(exit status 130, as a shell reports SIGINT); one stopped by SIGTERM while writing a file, with
what was kept (status 143).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, List, Optional

from dcac_config.errors import CommandFailed, Terminated, UserError

from .answers import check_before_import
from .base import error_line
from .parser import build_parser

# Ctrl-C: the exit status of a command stopped by SIGINT, as shells report it (128 + 2).
INTERRUPTED_STATUS = 130
# What a command stopped by Ctrl-C leaves and how to go on; a training run says it itself
# (which folder, whether it has a checkpoint to resume from).
INTERRUPTED_ADVICE = {
    "experiments": "run the same dcac experiments command again: finished runs are skipped and the interrupted "
                   "one continues (from its last checkpoint, or anew if it had none)",
    "demo": "run dcac demo again: it replaces its own earlier runs",
    "extract": "its output is written whole at the end, so nothing was written; run the same command again",
    "export": "its output is written whole at the end, so nothing was written; run the same command again",
    "visualize": "run the same command again (with --overwrite if some pictures were written already)",
    "bench": "its figures are written at the end, so nothing was written; run the same command again",
}


def command_handler(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The implementation a parsed command line names (``handler``, "module:function"), imported
    now; importing it imports and registers ``dcac_plugin``."""
    module, _, name = args.handler.partition(":")
    return getattr(importlib.import_module(module), name)


def report(err: Exception, status: int) -> int:
    """Print ``err`` as ``dcac``'s one error line; returns the exit status to end with."""
    print(error_line(str(err)), file=sys.stderr)
    return status


def interrupted_line(command: str, err: KeyboardInterrupt) -> str:
    """The one line for a command stopped by Ctrl-C: what was interrupted and how to go on."""
    state = getattr(err, "state", "")
    if command in INTERRUPTED_ADVICE:
        return f"Interrupted (Ctrl-C): {state + '; ' if state else f'dcac {command} stopped; '}" \
               f"{INTERRUPTED_ADVICE[command]}."
    if state:  # a training run: its state and advice
        return f"Interrupted (Ctrl-C): {err}."
    return f"Interrupted (Ctrl-C): dcac {command} stopped before writing anything; run it again."


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``dcac ARGV`` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        check_before_import(args)  # a config's errors, before any model is imported
        return command_handler(args)(args)  # importing it may end in a SetupError (an unsupported torchreid)
    except CommandFailed as err:
        return report(err, 1)
    except UserError as err:
        return report(err, 2)
    except KeyboardInterrupt as err:
        print(error_line(interrupted_line(args.command, err)), file=sys.stderr)
        return INTERRUPTED_STATUS
    except Terminated as err:
        return report(Exception(err.message), Terminated.STATUS)
