"""torchreid-style launcher over dcac-reid, with upstream scripts/main.py's flags:

    python scripts/main.py --config-file single/X -s market1501 -t msmt17 --root DATA data.save_dir log/x

Only in a clone of the repository (scripts/ is not installed); ``dcac train`` takes the same flags.
"""
import argparse
import sys

from dcac_cli import add_launcher_arguments
from dcac_cli import main as dcac_main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_launcher_arguments(parser)
    parser.parse_args()  # --help and argument errors, exactly as upstream
    sys.exit(dcac_main(["train"] + sys.argv[1:]))
