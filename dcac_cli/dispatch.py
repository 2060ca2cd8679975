"""The ``dcac`` entry point: parse with the standard library, then import and run the command.

All of a command's failures that the user can fix end here, in one form: ``dcac: error:
<message>`` on stderr and exit status 2 (a failed run or export check: status 1), no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, List, Optional

from .base import error_line
from .parser import build_parser


def command_handler(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The implementation a parsed command line names (``handler``, "module:function"), imported
    now; importing it imports and registers ``dcac_plugin``."""
    module, _, name = args.handler.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``dcac ARGV`` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    handler = command_handler(args)
    from dcac_plugin.errors import CommandFailed, user_errors

    try:
        return handler(args)
    except CommandFailed as err:
        print(error_line(str(err)), file=sys.stderr)
        return 1
    except user_errors() as err:
        print(error_line(str(err)), file=sys.stderr)
        return 2
