"""The ``dcac`` command line: its parser and entry point, apart from ``dcac_plugin``.

``import dcac_plugin`` registers everything into torchreid (torch, diffusers, open_clip: seconds)
and must keep doing so; any submodule of it imports the package first. So the parser, which
``--help`` and argument errors need alone, lives here, on the standard library only, and the
commands' implementations in ``dcac_plugin`` are imported after parsing.
"""
from .dispatch import main
from .parser import add_launcher_arguments, build_parser

__all__ = ["add_launcher_arguments", "build_parser", "main"]
