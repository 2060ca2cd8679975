import os
import warnings

import pytest

warnings.filterwarnings("ignore", message="Cython evaluation")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dcac_plugin  # noqa: E402,F401  (registration under test everywhere)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One data root per test session: synthetic datasets are generated there once."""
    return str(tmp_path_factory.mktemp("reid-data"))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Generated artefacts (the tiny diffusion model) go to a per-session folder, not ~/.cache."""
    os.environ["DCAC_CACHE"] = str(tmp_path_factory.mktemp("dcac-cache"))
    yield os.environ["DCAC_CACHE"]
