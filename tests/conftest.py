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


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache in use for this test, and the hub probe forgotten."""
    import huggingface_hub

    from dcac_plugin import hub

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    hub._probe.cache_clear()
    yield cache
    hub._probe.cache_clear()


def refuse_download(*args, **kwargs):
    """Stands in for a download function: a test that must not download fails if it is called."""
    raise AssertionError("a download was attempted")


def fixed_dcac_batch(engine, model) -> dict:
    """A fixed two-view batch of 4 identities x 2 images, with the engine's PCL memory built from it.

    Leaves the model in train mode, ready for ``engine.forward_backward(batch)``.
    """
    import torch

    torch.manual_seed(1)
    reid_view, diffusion_view = torch.randn(8, 3, 128, 64), torch.rand(8, 3, 128, 128) * 2 - 1
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with torch.no_grad():
        engine.memory.initialize(model.eval()(reid_view), pids)
    model.train()
    return {"img": [reid_view, diffusion_view], "pid": pids}
