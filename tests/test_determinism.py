"""train.deterministic: PyTorch's deterministic algorithms, the cuDNN flags and cuBLAS's workspace
setting, applied where the launcher sets up a run (before CUDA can start), restored when the run
ends, and an op without a deterministic kernel reported in one line naming the key."""
from __future__ import annotations

import os

import pytest
import torch
from conftest import make_engine, one_dcac_step, train_error

from dcac_config.defaults import get_default_config
from dcac_config.errors import ConfigError
from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path
from dcac_plugin.run import launcher
from dcac_plugin.run.determinism import (CUBLAS_WORKSPACE_CONFIG, determinism_errors_explained, enable_determinism,
                                         explain_determinism_error, restored_determinism)

cudnn = torch.backends.cudnn


def settings():
    """(deterministic algorithms, warn only, cudnn.deterministic, cudnn.benchmark, CUBLAS_WORKSPACE_CONFIG)."""
    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn.deterministic, cudnn.benchmark, os.environ.get(CUBLAS_WORKSPACE_CONFIG))


@pytest.fixture(autouse=True)
def kept_settings():
    """Every test starts without CUBLAS_WORKSPACE_CONFIG, and the process's settings are put back
    afterwards by plain torch calls (not by the code under test)."""
    before = settings()
    os.environ.pop(CUBLAS_WORKSPACE_CONFIG, None)
    yield before
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    cudnn.deterministic, cudnn.benchmark = before[2], before[3]
    if before[4] is None:
        os.environ.pop(CUBLAS_WORKSPACE_CONFIG, None)
    else:
        os.environ[CUBLAS_WORKSPACE_CONFIG] = before[4]


def put_without_accumulate():
    """An op PyTorch has no deterministic kernel for, on the CPU too."""
    torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))


# ------------------------------------------------------------------------------ the key

def test_the_key_is_off_by_default_and_in_the_paper_recipe():
    assert get_default_config().train.deterministic is False
    assert build_config(None, ["engine", "dcac"]).train.deterministic is False
    assert build_config(demo_config_path("dcac")).train.deterministic is False


def test_the_key_takes_true_from_the_command_line_and_a_file(tmp_path):
    assert build_config(None, ["train.deterministic", "True"]).train.deterministic is True
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  deterministic: true\n")
    assert build_config(str(path)).train.deterministic is True


@pytest.mark.parametrize("value", ["yes", "1", "true", "None", "on"])
def test_dcac_train_refuses_anything_but_true_or_false_in_one_line(tmp_path, capsys, value):
    assert train_error(tmp_path, capsys, "train.deterministic", value) == (
        f"Bad value on the command line: train.deterministic takes True or False, not {value!r}.")


@pytest.mark.parametrize("text,shown", [("1", "1"), ("null", "None"), ("'yes'", "'yes'")])
def test_a_file_giving_the_key_another_type_is_refused_naming_it(tmp_path, text, shown):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"train:\n  deterministic: {text}\n")
    with pytest.raises(ConfigError) as error:
        build_config(str(path))
    assert str(error.value) == f"Bad value in {path}: train.deterministic takes True or False, not {shown}."


# ------------------------------------------------------------------------------ the settings

def test_enabling_sets_the_flags_and_the_cublas_workspace():
    lines = enable_determinism()
    assert settings() == (True, False, True, False, ":4096:8")
    assert len(lines) == 1 and lines[0].startswith("Deterministic: train.deterministic True: ")
    assert "CUBLAS_WORKSPACE_CONFIG=:4096:8" in lines[0] and "costs speed" in lines[0]


@pytest.mark.parametrize("value,note", [(":16:8", False), (":0:0", True)])
def test_a_cublas_workspace_set_by_the_user_is_kept(value, note):
    os.environ[CUBLAS_WORKSPACE_CONFIG] = value
    lines = enable_determinism()
    assert os.environ[CUBLAS_WORKSPACE_CONFIG] == value
    assert f"CUBLAS_WORKSPACE_CONFIG={value}" in lines[0]
    assert (len(lines) == 2 and f"is {value!r} (set before the run, kept)" in lines[1]) == note


def test_enabling_after_cuda_started_says_cublas_may_not_follow(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    lines = enable_determinism()
    assert len(lines) == 2 and "CUDA was initialised in this process before CUBLAS_WORKSPACE_CONFIG" in lines[1]


def test_the_settings_are_put_back_after_the_block():
    cudnn.benchmark = True  # whatever they were, not only the defaults
    before = settings()
    with restored_determinism():
        enable_determinism()
        assert settings() != before
    assert settings() == before and CUBLAS_WORKSPACE_CONFIG not in os.environ


class Started(Exception):
    """Raised by the stand-in for init_distributed: prepare got that far."""


def stop_at_init_distributed(monkeypatch):
    """Record the settings when prepare reaches init_distributed, the first call that may start CUDA
    (set_device under nccl; model.cuda() comes later), then stop."""
    seen = []

    def init_distributed(*args, **kwargs):
        seen.append(settings())
        raise Started

    monkeypatch.setattr(launcher.distributed, "init_distributed", init_distributed)
    return seen


@pytest.mark.parametrize("deterministic", [True, False])
def test_prepare_applies_the_key_before_anything_can_start_cuda(monkeypatch, capsys, deterministic):
    cudnn.benchmark = True  # False must leave what it finds
    before = settings()
    seen = stop_at_init_distributed(monkeypatch)
    with pytest.raises(Started):
        launcher.prepare(build_config(demo_config_path("dcac"), ["train.deterministic", str(deterministic)]))
    assert seen == [(True, False, True, False, ":4096:8") if deterministic else before]
    logged = capsys.readouterr().out
    assert logged.startswith("Deterministic: train.deterministic True: ") if deterministic else logged == ""


def test_a_run_puts_the_settings_back_when_it_ends(monkeypatch, tmp_path):
    before = settings()
    seen = stop_at_init_distributed(monkeypatch)
    cfg = build_config(demo_config_path("dcac"), ["train.deterministic", "True", "data.save_dir",
                                                   str(tmp_path / "run")])
    with pytest.raises(Started):
        launcher.run(cfg)
    assert seen == [(True, False, True, False, ":4096:8")] and settings() == before


# ------------------------------------------------------------------------------ errors

def test_an_op_without_a_deterministic_kernel_stops_with_the_key_named():
    enable_determinism()
    with pytest.raises(ConfigError) as error, determinism_errors_explained(True):
        put_without_accumulate()
    assert str(error.value) == ("train.deterministic True: PyTorch has no deterministic implementation of put_ on "
                                "this device. Set train.deterministic False to train with it (a resumed run is then "
                                "close to an uninterrupted one, not bitwise identical).")
    assert isinstance(error.value.__cause__, RuntimeError)  # the log's traceback keeps PyTorch's


def test_cublas_refusal_is_explained_and_other_errors_pass_unchanged():
    cublas = RuntimeError("Deterministic behavior was enabled with either `torch.use_deterministic_algorithms(True)` "
                          "or `at::Context::setDeterministicAlgorithms(true)`, but this operation is not deterministic "
                          "because it uses CuBLAS and you have CUDA >= 10.2. To enable deterministic behavior ...")
    assert "because it uses CuBLAS and you have CUDA >= 10.2. Set train.deterministic False" in str(
        explain_determinism_error(cublas))
    other = RuntimeError("shape mismatch")
    assert explain_determinism_error(other) is None
    with pytest.raises(RuntimeError) as error, determinism_errors_explained(True):
        raise other
    assert error.value is other


def test_without_the_key_pytorch_errors_are_not_rewritten():
    torch.use_deterministic_algorithms(True)  # set by the user's own code, not by train.deterministic
    with pytest.raises(RuntimeError, match="put_ does not have a deterministic implementation"), \
            determinism_errors_explained(False):
        put_without_accumulate()


def test_a_dcac_training_step_on_the_cpu_gives_the_same_bits_in_deterministic_mode(tiny_sd):
    def step():
        engine, model, feedback = make_engine(tiny_sd)
        return one_dcac_step(engine, model, feedback, diffusion_size=32)

    loss, grads = step()
    with restored_determinism():
        enable_determinism()
        deterministic_loss, deterministic_grads = step()
    assert deterministic_loss == loss
    assert grads.keys() == deterministic_grads.keys() and any(n.startswith("fb.") for n in grads)
    for name, grad in grads.items():
        assert torch.equal(grad, deterministic_grads[name]), name
