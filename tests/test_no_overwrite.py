"""Nothing of the user's is overwritten without being asked: a run into a folder holding another
run, two runs in one folder at once, a run of no epoch, and the output files of the tools.

Every refusal is checked for its message (the problem and the fix) and for what it left: the
bytes of every file in the folder it was pointed at, unchanged."""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from tree_guard import digests

import dcac_plugin.tools.inference
from dcac_config.loading import build_config
from dcac_config.run_folder.run_lock import LOCK_NAME, read_owner
from dcac_config.run_folder.save_dir import continues_run, run_outputs
from dcac_config.shipped import demo_config_path
from dcac_plugin.cli import main
from dcac_plugin.run import launcher
from dcac_plugin.run.launcher import check_epochs, run
from dcac_plugin.tools.extract import load_features


def train(save_dir, *args) -> int:
    """``dcac train`` of the tiny baseline config into ``save_dir``; ``args`` are flags, then KEY VALUE pairs."""
    return main(["train", "--config-file", demo_config_path("baseline"), *args, "data.save_dir", str(save_dir),
                 "train.print_freq", "100"])


@pytest.fixture
def trained_run(baseline_run):
    """The session's finished one-epoch run (conftest.baseline_run); these tests only read it."""
    return baseline_run


@pytest.fixture
def own_copy(trained_run, tmp_path):
    """A copy of the trained run that a test may change."""
    return shutil.copytree(trained_run, tmp_path / "run")


# ------------------------------------------------------------- a folder holding a run


def test_training_into_a_folder_holding_a_run_is_refused_before_any_work(trained_run, data_root, capsys):
    before = digests(trained_run)
    assert train(trained_run, "--root", data_root, "train.max_epoch", "1") == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith(f"dcac: error: data.save_dir {trained_run} already holds a run (config.yaml, results.json, "
                          "encoder.safetensors, events.out.tfevents.")
    assert "this run would overwrite it" in err
    assert f"model.resume {trained_run}" in err and "data.overwrite True" in err
    assert "set data.save_dir to another folder" in err
    assert "Show configuration" not in captured.out  # refused before the run began
    assert digests(trained_run) == before  # no byte changed, no file added (not even a log or a lock)


def test_resume_naming_a_checkpoint_of_the_run_continues_it(own_copy, data_root, capsys):
    latest = os.path.join(own_copy, "model", "latest.pth.tar")
    assert train(own_copy, "--root", data_root, "train.max_epoch", "2", "model.resume", latest) == 0
    assert f"Resumed from {latest} at epoch 1" in capsys.readouterr().out
    assert json.load(open(os.path.join(own_copy, "results.json")))["results"]["synthetic_b"]["epoch"] == 2


def test_resume_names_the_run_by_its_folder_or_a_file_in_it_and_only_to_train(tmp_path):
    save_dir = str(tmp_path / "run")

    def cfg(*opts):
        return build_config(demo_config_path("baseline"), ["data.save_dir", save_dir, *opts])

    assert continues_run(cfg("model.resume", save_dir))
    assert continues_run(cfg("model.resume", os.path.join(save_dir, "model", "model.pth.tar-3")))
    assert not continues_run(cfg("model.resume", str(tmp_path / "run-2")))  # a sibling with a common prefix
    assert not continues_run(cfg("model.resume", save_dir, "test.evaluate", "True"))
    assert not continues_run(cfg())


def test_overwrite_starts_over_and_deletes_the_earlier_runs_outputs(own_copy, data_root, capsys):
    leftover = os.path.join(own_copy, "model", "model.pth.tar-7")  # as if the earlier run had trained longer
    shutil.copy(os.path.join(own_copy, "model", "latest.pth.tar"), leftover)
    earlier_events = set(glob.glob(os.path.join(own_copy, "events.out.tfevents.*")))
    earlier_logs = set(glob.glob(os.path.join(own_copy, "train.log-*")))

    assert train(own_copy, "--root", data_root, "train.max_epoch", "1", "data.overwrite", "True") == 0
    out = capsys.readouterr().out
    assert f"data.overwrite True: deleted the earlier run's outputs in {own_copy} (config.yaml" in out
    assert not os.path.exists(leftover)
    events = set(glob.glob(os.path.join(own_copy, "events.out.tfevents.*")))
    assert len(events) == 1 and not events & earlier_events  # one run's curves, not two
    assert earlier_logs <= set(glob.glob(os.path.join(own_copy, "train.log-*")))  # logs stay
    assert sorted(os.listdir(os.path.join(own_copy, "model"))) == ["best.pth.tar", "latest.pth.tar",
                                                                    "model.pth.tar-1"]


def test_an_evaluation_never_replaces_a_training_runs_results(trained_run, data_root, capsys):
    before = digests(trained_run)
    latest = os.path.join(trained_run, "model", "latest.pth.tar")
    evaluate = ("--root", data_root, "test.evaluate", "True")
    assert train(trained_run, *evaluate, "model.load_weights", latest) == 2
    err = capsys.readouterr().err
    assert "this evaluation (test.evaluate True) would overwrite its config.yaml and results.json" in err
    assert f"Set data.save_dir to another folder (e.g. {os.path.join(trained_run, 'eval')})" in err
    # Resuming the run to evaluate it would replace its results.json just the same.
    assert train(trained_run, *evaluate, "model.resume", trained_run) == 2
    assert "this evaluation (test.evaluate True) would overwrite" in capsys.readouterr().err
    # Starting over would delete the very checkpoint the evaluation reads.
    assert train(trained_run, *evaluate, "model.load_weights", latest, "data.overwrite", "True") == 2
    err = capsys.readouterr().err
    assert f"data.overwrite True deletes the earlier run in data.save_dir {trained_run}" in err
    assert f"model.load_weights {latest} is part of it" in err
    assert digests(trained_run) == before


def test_logs_caches_and_locks_are_not_a_runs_outputs(tmp_path):
    for name in ("train.log-2024-01-01-00-00-00", "latent_cache.pth", LOCK_NAME):
        (tmp_path / name).write_text("x")
    (tmp_path / "model").mkdir()
    assert run_outputs(str(tmp_path)) == []
    (tmp_path / "model" / "latest.pth.tar").write_text("x")
    (tmp_path / "config.yaml").write_text("x")
    assert run_outputs(str(tmp_path)) == ["config.yaml", os.path.join("model", "latest.pth.tar")]


def test_demo_run_again_replaces_its_own_runs_and_refuses_others(data_root, tmp_path, capsys):
    demo = ["demo", "--engines", "baseline", "--root", data_root, "--save-dir", str(tmp_path / "demo"),
            "train.max_epoch", "1", "train.print_freq", "100"]
    assert main(demo) == 0
    assert main(demo) == 0
    assert "data.overwrite True: deleted the earlier run's outputs" in capsys.readouterr().out
    # A folder of the same name holding another engine's run is not the demo's to replace.
    other = tmp_path / "other"
    (other / "baseline").mkdir(parents=True)
    (other / "baseline" / "config.yaml").write_text(build_config(demo_config_path("softmax")).dump())
    before = digests(other)
    assert main(demo[:6] + [str(other)] + demo[7:]) == 2
    assert "data.overwrite True" in capsys.readouterr().err
    assert digests(other) == before


# ---------------------------------------------------------------- one run at a time


def wait_until(condition, process, what: str) -> None:
    """Poll ``condition`` while ``process`` runs; fail with its exit status if it ends first."""
    while not condition():
        assert process.poll() is None, f"the first run ended (exit status {process.returncode}) before {what}"
        time.sleep(0.2)


def stopped(pid: int) -> bool:
    """Every thread of ``pid`` is stopped (SIGSTOP has taken effect), read from /proc."""
    states = []
    for task in glob.glob(f"/proc/{pid}/task/*/stat"):
        with open(task) as handle:
            states.append(handle.read().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in "tT" for state in states)


def test_a_second_run_is_refused_while_the_first_holds_the_folder_and_takes_over_once_it_died(
        data_root, tmp_path, capsys):
    save_dir = tmp_path / "busy"
    lock = save_dir / LOCK_NAME
    first = subprocess.Popen(
        [sys.executable, "-m", "dcac_plugin.cli", "train", "--config-file", demo_config_path("baseline"), "--root",
         data_root, "data.save_dir", str(save_dir), "train.max_epoch", "1000", "train.print_freq", "1000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        # Training has started (config.yaml written, under the lock); freeze the run so its files hold still.
        wait_until(lambda: (save_dir / "config.yaml").is_file(), first, "it started training")
        first.send_signal(signal.SIGSTOP)
        wait_until(lambda: stopped(first.pid), first, "it stopped")
        owner = read_owner(lock.read_bytes())
        assert owner.pid == first.pid and owner.host == socket.gethostname()
        before = digests(save_dir)

        assert train(save_dir, "--root", data_root, "train.max_epoch", "1") == 2
        err = capsys.readouterr().err
        assert (f"data.save_dir {save_dir} is in use by another run (pid {first.pid}@{socket.gethostname()}, "
                f"since {owner.started}; lock file {lock})") in err
        assert "Wait for it to finish, or set data.save_dir to another folder" in err
        assert digests(save_dir) == before
    finally:
        first.kill()
        first.wait()

    # Killed, it could not remove its lock: a stale lock on this host is taken over with a note.
    assert lock.is_file()
    assert train(save_dir, "--root", data_root, "train.max_epoch", "1", "data.overwrite", "True") == 0
    out = capsys.readouterr().out
    assert f"Note: taking over the lock {lock} of a run that is no longer running (pid {first.pid}@" in out
    assert not lock.exists()  # released at the end
    assert json.load(open(save_dir / "results.json"))["results"]["synthetic_b"]["epoch"] == 1


def write_lock(folder, text: str) -> str:
    folder.mkdir()
    path = folder / LOCK_NAME
    path.write_text(text)
    return str(path)


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(data_root, tmp_path, capsys):
    save_dir = tmp_path / "shared"
    owner = {"pid": 4242, "host": "gpu-node-7.example", "started": "2024-05-01 09:30:00"}
    lock = write_lock(save_dir, json.dumps(owner))
    before = digests(save_dir)
    assert train(save_dir, "--root", data_root, "train.max_epoch", "1") == 2
    err = capsys.readouterr().err
    assert (f"is in use by a run on another host (pid 4242@gpu-node-7.example, since 2024-05-01 09:30:00; "
            f"lock file {lock})") in err
    assert f"If that run is no longer running, delete {lock} and start again" in err
    assert digests(save_dir) == before


def test_an_unreadable_lock_is_refused_with_how_to_remove_it(data_root, tmp_path, capsys):
    lock = write_lock(tmp_path / "odd", "not a lock of ours")
    assert train(tmp_path / "odd", "--root", data_root, "train.max_epoch", "1") == 2
    assert f"whose owner cannot be read. If no run uses this folder, delete {lock}" in capsys.readouterr().err


def test_the_lock_is_released_when_a_run_is_interrupted(data_root, tmp_path, monkeypatch):
    def interrupted(cfg):
        assert os.path.isfile(tmp_path / "run" / LOCK_NAME)  # held while the run builds
        raise KeyboardInterrupt

    monkeypatch.setattr(launcher, "prepare", interrupted)
    cfg = build_config(demo_config_path("baseline"), ["data.root", data_root, "data.save_dir", str(tmp_path / "run")])
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert not (tmp_path / "run").exists()  # a failed start in a folder it created leaves nothing, lock included


# -------------------------------------------------------------------- zero epochs


@pytest.mark.parametrize("opts, expected", [
    (("train.max_epoch", "-1"), "train.max_epoch is -1: a training run needs at least 1 epoch"),
    (("train.max_epoch", "0"), "train.max_epoch is 0: a training run needs at least 1 epoch"),
    (("train.max_epoch", "3", "train.start_epoch", "3"), "train.start_epoch 3 is outside [0, train.max_epoch = 3)"),
    (("train.max_epoch", "3", "train.start_epoch", "-1"), "train.start_epoch -1 is outside [0, train.max_epoch = 3)"),
], ids=["max_epoch -1", "max_epoch 0", "start_epoch = max_epoch", "start_epoch -1"])
def test_a_run_of_no_epoch_is_refused_before_it_touches_a_trained_run(opts, expected, trained_run, data_root, capsys):
    before = digests(trained_run)
    # Even asked to start over, it must not replace the trained encoder with a random one.
    assert train(trained_run, "--root", data_root, *opts, "data.overwrite", "True") == 2
    err = capsys.readouterr().err
    assert expected in err
    fix = "Set train.max_epoch to 1 or more" if "max_epoch is" in expected else "Set train.start_epoch between 0 and 2"
    assert fix in err
    assert digests(trained_run) == before


def test_an_evaluation_needs_no_epoch():
    check_epochs(build_config(demo_config_path("baseline"), ["train.max_epoch", "0", "test.evaluate", "True"]))


# ---------------------------------------------------------------- the tools' outputs


def refuse_model_loading(*args, **kwargs):
    """Stands in for loading a trained model: a tool's output checks must come first."""
    raise AssertionError("the model was loaded before the outputs were checked")


@pytest.fixture
def no_model_loading(monkeypatch):
    monkeypatch.setattr(dcac_plugin.tools.inference, "load_trained_model", refuse_model_loading)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(folder / name)
    return str(folder)


def users_file(path, content: bytes = b"the user's own file") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content)
    return str(path)


def test_extract_refuses_an_existing_output_then_replaces_it_when_asked(
        trained_run, images, tmp_path, monkeypatch, capsys):
    output = users_file(tmp_path / "features.safetensors")
    with monkeypatch.context() as patch:
        patch.setattr(dcac_plugin.tools.inference, "load_trained_model", refuse_model_loading)
        assert main(["extract", trained_run, images, "--output", output, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"dcac: error: {output} already exists; this command would overwrite it." in err
        assert "Pass --overwrite to replace it, or choose another --output." in err
        assert open(output, "rb").read() == b"the user's own file"
        # A folder named as the output fails at once too, not after the work.
        assert main(["extract", trained_run, images, "--output", str(tmp_path), "--device", "cpu"]) == 2
        assert f"--output: {tmp_path} is a folder; name the file to write" in capsys.readouterr().err

    assert main(["extract", trained_run, images, "--output", output, "--device", "cpu", "--overwrite"]) == 0
    features, paths = load_features(output)
    assert features.shape[0] == 2 and [os.path.basename(p) for p in paths] == ["a.jpg", "b.jpg"]


def test_export_refuses_to_replace_the_default_output_unless_asked(own_copy, no_model_loading, capsys):
    output = users_file(os.path.join(own_copy, "encoder.torchscript.pt"))
    assert main(["export", str(own_copy), "--format", "torchscript"]) == 2
    assert f"{output} already exists; this command would overwrite it. Pass --overwrite" in capsys.readouterr().err
    assert open(output, "rb").read() == b"the user's own file"


def test_export_with_overwrite_replaces_the_file(own_copy):
    import torch

    output = users_file(os.path.join(own_copy, "encoder.pt"))
    assert main(["export", str(own_copy), "--format", "torchscript", "--output", output, "--overwrite"]) == 0
    assert torch.jit.load(output)(torch.zeros(1, 3, 128, 64)).shape == (1, 64)


def test_visualize_curves_refuses_existing_pictures_then_replaces_them_when_asked(own_copy, capsys):
    picture = users_file(os.path.join(own_copy, "visualize", "lr.png"))
    assert main(["visualize", "curves", str(own_copy)]) == 2
    err = capsys.readouterr().err
    assert f"{picture} already exists; this command would overwrite it" in err and "choose another --out" in err
    assert open(picture, "rb").read() == b"the user's own file"
    assert main(["visualize", "curves", str(own_copy), "--overwrite"]) == 0
    assert open(picture, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("action", ["gradcam", "ranked"])
def test_visualize_refuses_existing_outputs_before_loading_the_model(action, own_copy, images, no_model_loading,
                                                                     tmp_path, capsys):
    if action == "gradcam":
        kept = users_file(tmp_path / "cam.png")
        argv = ["gradcam", str(own_copy), os.path.join(images, "a.jpg"), "--class-index", "1", "--out", kept]
        expected = f"{kept} already exists; this command would overwrite it"
    else:
        kept = users_file(tmp_path / "pictures" / "0001_c1s1_000001_00.jpg")
        argv = ["ranked", str(own_copy), "--out", str(tmp_path / "pictures")]
        expected = (f"{tmp_path / 'pictures'} already holds files (0001_c1s1_000001_00.jpg); this command would write "
                    "over them. Pass --overwrite to write there all the same, or choose another --out.")
    assert main(["visualize", *argv]) == 2
    assert expected in capsys.readouterr().err
    assert open(kept, "rb").read() == b"the user's own file"
