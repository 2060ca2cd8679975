"""What every ``dcac`` parser shares: one form for errors and one help layout.

A command line argparse rejects and an input a command rejects read the same,
``dcac: error: <message>`` with exit status 2, whichever sub-command it was.
"""
from __future__ import annotations

import argparse
from typing import NoReturn

PROG = "dcac"


def error_line(message: str) -> str:
    """How ``dcac`` reports an error on stderr."""
    return f"{PROG}: error: {message}"


class SetupError(ImportError):
    """This environment cannot run ``dcac_plugin`` (e.g. an unsupported torchreid), found while a
    command's implementation is imported; the message names what is supported and how to install
    it, so ``dcac`` ends with it alone, like a usage error. Defined here so that the entry point
    can catch it without importing ``dcac_plugin``."""


class DcacArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser (and, through ``add_subparsers``, its sub-command parsers) whose
    errors read ``dcac: error: ...`` first, then the usage of the (sub-)command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{error_line(message)}\n{self.format_usage()}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown after each option's help; descriptions and epilogs (engine lists,
    examples) printed as written."""
