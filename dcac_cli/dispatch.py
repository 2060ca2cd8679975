"""The ``dcac`` entry point: parse with the standard library, then import and run the command.

All of a command's failures that the user can fix end here, in one form: ``dcac: error:
<message>`` on stderr and exit status 2 (a failed run or export check: status 1), no traceback;
so does an environment ``dcac_plugin`` cannot run in (:class:`~dcac_cli.base.SetupError`).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, List, Optional

from .base import SetupError, error_line
from .parser import build_parser


def command_handler(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The implementation a parsed command line names (``handler``, "module:function"), imported
    now; importing it imports and registers ``dcac_plugin``."""
    module, _, name = args.handler.partition(":")
    return getattr(importlib.import_module(module), name)


def report(err: Exception, status: int) -> int:
    """Print ``err`` as ``dcac``'s one error line; returns the exit status to end with."""
    print(error_line(str(err)), file=sys.stderr)
    return status


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``dcac ARGV`` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        handler = command_handler(args)
    except SetupError as err:  # e.g. an unsupported torchreid, refused by `import dcac_plugin`
        return report(err, 2)
    from dcac_plugin.errors import CommandFailed, user_errors

    try:
        return handler(args)
    except CommandFailed as err:
        return report(err, 1)
    except user_errors() as err:
        return report(err, 2)
