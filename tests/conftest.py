import atexit
import os
import shutil
import tempfile

import pytest

import tree_guard  # standard library only: safe before the redirection below

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The user's HOME and environment, remembered before this session moves HOME: the guard watches
# that HOME, and the environment is put back at the end of the session.
USER_HOME = os.path.realpath(os.path.expanduser("~"))
USER_ENVIRON = dict(os.environ)
# Here, at conftest import, before any test module (or dcac_plugin below) imports matplotlib,
# onnxruntime, torch or huggingface_hub, which read HOME and XDG_CACHE_HOME when imported or first
# used: what they keep under HOME goes to this session folder, removed at the end.
SESSION_DIR = tempfile.mkdtemp(prefix="dcac-tests-")
atexit.register(shutil.rmtree, SESSION_DIR, True)  # should pytest stop before pytest_unconfigure
tree_guard.redirect_home(SESSION_DIR)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dcac_plugin  # noqa: E402,F401  (registration under test everywhere)


def guarded_folders() -> list:
    """The folders the session must leave as it found them: the working tree, the current directory
    and the user's whole HOME (with any cache the user's variables moved out of it)."""
    return tree_guard.user_folders(REPO_ROOT, USER_HOME, USER_ENVIRON)


def guard_snapshot(config) -> tree_guard.Snapshot:
    """A snapshot of :func:`guarded_folders`, leaving out what is no test's doing."""
    basetemp = config.getoption("basetemp", None)
    return tree_guard.snapshot(guarded_folders(), tree_guard.skipped_folders(USER_ENVIRON, basetemp))


def pytest_sessionstart(session):
    session.config.user_files_before = guard_snapshot(session.config)


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a test created, changed or deleted a file of the user's."""
    before = getattr(session.config, "user_files_before", None)
    if before is None:
        return
    touched = tree_guard.changes(before, guard_snapshot(session.config))
    if touched:
        shown = "\n  ".join(touched[:20]) + (f"\n  ... and {len(touched) - 20} more" if len(touched) > 20 else "")
        print(f"\nThe tests touched files outside their temporary folders:\n  {shown}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config):
    """The user's environment back (HOME, the caches' variables, what tests set without monkeypatch),
    and the session folder, with what libraries wrote in its HOME, removed."""
    tree_guard.restore_environment(USER_ENVIRON)
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One data root per test session: synthetic datasets are generated there once."""
    return str(tmp_path_factory.mktemp("reid-data"))


@pytest.fixture(scope="session")
def baseline_run(data_root, tmp_path_factory):
    """A finished one-epoch run of the tiny baseline on synthetic_a (64 identities): config.yaml,
    results.json, encoder, checkpoints, events, log. Shared read-only: tests that change a run copy it."""
    from dcac_config.shipped import demo_config_path
    from dcac_plugin.cli import main

    save_dir = str(tmp_path_factory.mktemp("baseline-run") / "run")
    assert main(["train", "--config-file", demo_config_path("baseline"), "--root", data_root, "data.save_dir",
                 save_dir, "train.max_epoch", "1", "train.print_freq", "100"]) == 0
    return save_dir


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Generated artefacts (the tiny diffusion model) go to a per-session folder, not ~/.cache."""
    os.environ["DCAC_CACHE"] = str(tmp_path_factory.mktemp("dcac-cache"))
    yield os.environ["DCAC_CACHE"]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache in use for this test, and the hub probe forgotten."""
    import huggingface_hub

    from dcac_plugin.utils import hub

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    hub._probe.cache_clear()
    yield cache
    hub._probe.cache_clear()


def one_error_line(capsys) -> str:
    """The message of the error a command just printed, after checking its form: ``dcac: error:``,
    one line, no traceback."""
    err = capsys.readouterr().err
    assert err.startswith("dcac: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err[len("dcac: error: "):].rstrip("\n")


def train_error(tmp_path, capsys, *opts: str, config: str = "") -> str:
    """The message ``dcac train`` (default config: demo_baseline) fails with, after checking that it
    failed before any work: exit status 2, one line, no traceback, nothing written."""
    from dcac_config.shipped import demo_config_path
    from dcac_plugin.cli import main

    config = config or demo_config_path("baseline")
    save_dir = tmp_path / "run"
    code = main(["train", "--config-file", config, "--root", str(tmp_path / "data"), "data.save_dir", str(save_dir),
                 *opts])
    message = one_error_line(capsys)
    assert code == 2
    assert not os.path.exists(save_dir) and not os.path.exists(tmp_path / "data")
    return message


def refuse_download(*args, **kwargs):
    """Stands in for a download function: a test that must not download fails if it is called."""
    raise AssertionError("a download was attempted")


def fixed_dcac_batch(engine, model, diffusion_size: int = 128) -> dict:
    """A fixed two-view batch of 4 identities x 2 images (diffusion views ``diffusion_size``
    square), with the engine's PCL memory built from it.

    Leaves the model in train mode, ready for ``engine.forward_backward(batch)``.
    """
    import torch

    torch.manual_seed(1)
    reid_view, diffusion_view = torch.randn(8, 3, 128, 64), torch.rand(8, 3, diffusion_size, diffusion_size) * 2 - 1
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with torch.no_grad():
        engine.memory.initialize(model.eval()(reid_view), pids)
    model.train()
    return {"img": [reid_view, diffusion_view], "pid": pids}


def one_dcac_step(engine, model, feedback, diffusion_size: int = 128):
    """One ``forward_backward`` on :func:`fixed_dcac_batch`; (loss summary, gradients of the
    Re-ID model and, prefixed ``fb.``, of the diffusion feedback)."""
    import torch

    batch = fixed_dcac_batch(engine, model, diffusion_size=diffusion_size)
    torch.manual_seed(7)
    summary = engine.forward_backward(batch)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    grads.update({f"fb.{n}": p.grad.detach().clone() for n, p in feedback.named_parameters() if p.grad is not None})
    return summary, grads


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A tiny Stable-Diffusion-shaped model folder (diffusers layout), written once per module."""
    from dcac_plugin.diffusion import save_tiny_stable_diffusion

    return save_tiny_stable_diffusion(str(tmp_path_factory.mktemp("sd") / "tiny-sd"))


def make_engine(tiny_sd, amp="off", *opts, use_gpu=False):
    """The demo's dcac engine on the tiny CLIP ViT and ``tiny_sd``, 4 identities, with the
    launcher's speed options and ``KEY VALUE`` overrides ``opts``; (engine, model, feedback)."""
    from types import SimpleNamespace

    import torch
    from torchreid import models

    from dcac_config.shipped import demo_config_path
    from dcac_config.loading import build_config
    from dcac_plugin.engines.dcac import DCACEngine, build_diffusion_feedback
    from dcac_plugin.run.launcher import apply_speed_options

    torch.manual_seed(0)
    cfg = build_config(demo_config_path("dcac"), ["dcac.diffusion.pretrained", tiny_sd, "train.amp", amp, *opts])
    model = models.build_model("clip_vit_tiny", num_classes=4, loss="reid", pretrained=False)
    feedback = build_diffusion_feedback(cfg, 4, model.feature_dim)
    apply_speed_options(cfg, model, feedback, use_gpu)
    params = list(model.parameters()) + [p for p in feedback.parameters() if p.requires_grad]
    manager = SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=4, sources=[])
    engine = DCACEngine(manager, model, torch.optim.SGD(params, lr=0.0), use_gpu=use_gpu, feedback=feedback,
                        amp=cfg.train.amp)
    return engine, model, feedback
