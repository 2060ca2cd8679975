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
