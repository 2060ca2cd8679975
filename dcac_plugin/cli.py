"""``python -m dcac_plugin.cli`` runs ``dcac`` (torchrun starts it this way).

The command line itself is :mod:`dcac_cli`; ``main`` is re-exported here so that
``from dcac_plugin.cli import main`` keeps working.
"""
import sys

from dcac_cli import main

from .moved import moved_attribute

__all__ = ["main"]


def __getattr__(name: str):
    """0.1's ``dcac_plugin.cli.cmd_train``, ``demo_config_path``...: now in the modules below."""
    return moved_attribute(__name__, name, ("dcac_plugin.tools.commands", "dcac_cli.answers", "dcac_config.shipped",
                                            "dcac_config.loading"))


if __name__ == "__main__":
    sys.exit(main())
