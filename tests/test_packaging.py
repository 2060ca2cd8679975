"""What the README promises about installing: PyTorch's CPU build satisfies our pins."""
import configparser
import os

from packaging.requirements import Requirement

SETUP_CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.cfg")


def install_requires() -> dict:
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    lines = [line.strip() for line in parser["options"]["install_requires"].splitlines() if line.strip()]
    return {Requirement(line).name: Requirement(line) for line in lines}


def test_pytorch_cpu_builds_satisfy_the_torch_pins():
    requires = install_requires()
    # PyTorch's CPU index names its builds with a local version label; pip must keep them.
    assert requires["torch"].specifier.contains("2.14.1+cpu")
    assert requires["torchvision"].specifier.contains("0.29.1+cpu")
    # ... and must not reach past the release the project is tested with.
    assert not requires["torch"].specifier.contains("2.15.0")
