"""``model.resume`` with another config than the resumed run's: keys a resume cannot change are
refused before any work, naming them; the others (more epochs, another learning rate or
precision, the evaluation, how it runs) are applied and said, so the recorded config.yaml is
what ran. A finished run, another engine, a file that is no checkpoint: one line each."""
import shutil

import pytest
import torch
from conftest import one_error_line
from tree_guard import digests as file_digests

import dcac_cli
from dcac_config.errors import ConfigError
from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path
from dcac_plugin.run.optim import build_scheduler
from dcac_plugin.run.resumption import apply_learning_rates, asked_learning_rates, epochs_left
from dcac_plugin.utils.checkpoint import load_checkpoint


def train(data_root, *opts, config="baseline"):
    return dcac_cli.main(["train", "--config-file", demo_config_path(config), "--root", data_root, *opts])


@pytest.fixture
def run(baseline_run, tmp_path):
    """A private copy of a finished one-epoch baseline run (train.max_epoch 1, train.lr 0.001)."""
    copy = tmp_path / "run"
    shutil.copytree(baseline_run, copy)
    return copy


def test_keys_a_resume_cannot_change_are_refused_before_any_work(run, data_root, capsys):
    before = file_digests(run)
    assert train(data_root, "data.save_dir", str(run), "model.resume", str(run), "train.max_epoch", "2",
                 "train.optim", "sgd", "dcac.pcl.temperature", "0.9", "train.lr", "0.5") == 2
    latest = run / "model" / "latest.pth.tar"
    assert one_error_line(capsys) == (
        f"model.resume {latest} continues the run of {run / 'config.yaml'}, and this config changes 2 keys a resume "
        "cannot: dcac.pcl.temperature 0.01 in the run, 0.9 now; train.optim adam in the run, sgd now. The resume "
        "restores that run's model, optimizer, schedule and state as they were, so these would be recorded but not "
        "used. Set them as the run had them (or leave them out), or start a new run from its weights with "
        f"model.load_weights {latest} in another data.save_dir. A resume may change train.max_epoch, train.lr, "
        "train.base_lr_mult, train.amp, the evaluation (test.*, data.targets) and how it runs (data.workers, devices, "
        "speed options, train.print_freq).")
    assert file_digests(run) == before  # not even a log: refused before the run's output starts


def test_a_resume_under_another_engine_is_refused(run, data_root, tmp_path, capsys):
    before = file_digests(run)
    assert train(data_root, "data.save_dir", str(tmp_path / "dcac"), "model.resume", str(run), config="dcac") == 2
    latest = run / "model" / "latest.pth.tar"
    assert one_error_line(capsys) == (
        f"model.resume {latest} was written by a run of engine baseline ({run / 'config.yaml'}), and this run's "
        "engine is dcac: a resume continues a run with its own engine, optimizer and state. To start a dcac run from "
        f"its weights, set model.load_weights {latest} instead (and leave out model.resume), in a data.save_dir of "
        "its own.")
    assert not (tmp_path / "dcac").exists() and file_digests(run) == before


def test_another_engine_without_config_yaml_is_refused_by_its_optimizer(run, data_root, tmp_path, capsys):
    """A checkpoint alone (no config.yaml beside it) is checked by what it holds."""
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run / "model" / "latest.pth.tar", alone / "latest.pth.tar")
    assert train(data_root, "data.save_dir", str(tmp_path / "dcac"), "model.resume", str(alone / "latest.pth.tar"),
                 "train.max_epoch", "2", config="dcac") == 2
    message = one_error_line(capsys)
    assert message.startswith(f"Checkpoint {alone / 'latest.pth.tar'} does not fit this run's optimizer (")
    assert message.endswith("it was written by another engine or optimizer setup (engine, train.optim, "
                            "train.staged_lr, train.new_layers, dcac.finetune). model.resume continues the same "
                            f"training only; to start from its weights, use model.load_weights "
                            f"{alone / 'latest.pth.tar'}.")
    assert not (tmp_path / "dcac").exists()


@pytest.mark.parametrize("name", ["results.json", "config.yaml"])
def test_a_run_file_that_is_no_checkpoint_is_named_with_the_files_that_are(run, data_root, tmp_path, capsys, name):
    assert train(data_root, "data.save_dir", str(tmp_path / "new"), "model.resume", str(run / name)) == 2
    assert one_error_line(capsys) == (
        f"model.resume {run / name} is not a checkpoint (the run's {name}). model.resume takes a run's folder (its "
        "model/latest.pth.tar) or one of the checkpoints in the run's model/ folder: latest.pth.tar, best.pth.tar or "
        "model.pth.tar-<epoch>.")
    assert not (tmp_path / "new").exists()


def test_resuming_a_finished_run_says_it_only_evaluates(run, data_root, capsys):
    latest = run / "model" / "latest.pth.tar"
    weights = load_checkpoint(str(latest))["state_dict"]
    assert train(data_root, "data.save_dir", str(run), "model.resume", str(run), "train.max_epoch", "1",
                 "train.print_freq", "100") == 0
    out = capsys.readouterr().out
    assert (f"Resumed from {latest} at epoch 1 of train.max_epoch 1: nothing is left to train, so this run only "
            "evaluates; raise train.max_epoch to train further.") in out
    assert "Resume: this config" not in out  # nothing differs but where the run is
    assert all(torch.equal(value, weights[key]) for key, value in load_checkpoint(str(latest))["state_dict"].items())


def test_a_max_epoch_below_the_checkpoint_is_refused():
    cfg = build_config(demo_config_path("baseline"), ["train.max_epoch", "2"])
    with pytest.raises(ConfigError, match=r"^train.max_epoch 2 is below epoch 3 of model.resume x.pth.tar: its model "
                                          r"has trained 3 epochs. Set train.max_epoch to 3 \(nothing more to train: "
                                          r"the run only evaluates\) or more.$"):
        epochs_left("x.pth.tar", 3, cfg)
    assert epochs_left("x.pth.tar", 1, cfg) == "Resumed from x.pth.tar at epoch 1"


def test_a_new_learning_rate_and_more_epochs_are_applied_and_recorded(run, data_root, capsys):
    assert train(data_root, "data.save_dir", str(run), "model.resume", str(run), "train.max_epoch", "2",
                 "train.lr", "0.5", "train.print_freq", "8") == 0
    out = capsys.readouterr().out
    assert ("Resume: this config changes train.lr 0.001 in the run, 0.5 now; train.max_epoch 1 in the run, 2 now; "
            "train.print_freq 100 in the run, 8 now; applied from the resumed epoch on.") in out
    # demo_baseline warms up over 2 epochs from 0.1 x lr, stepped as the authors' (1-based epoch):
    # epoch 1 runs at 0.55 x lr, epoch 2 at lr.
    assert ("Resume: learning rates of this config: 1 parameter group from initial 0.001 to 0.5 (x500), the restored "
            "schedule scaled alike; now 0.5.") in out
    assert "lr 0.500000" in out and "lr 0.001000" not in out  # torchreid's step lines: trained at the new rate
    state = load_checkpoint(str(run / "model" / "latest.pth.tar"))
    assert state["epoch"] == 2
    assert [group["initial_lr"] for group in state["optimizer"]["param_groups"]] == [0.5]
    assert state["scheduler"]["base_lrs"] == [0.5]
    recorded = build_config(str(run / "config.yaml"))
    assert (recorded.train.lr, recorded.train.max_epoch) == (0.5, 2)


def scheduled_rates(cfg, groups, epochs, optimizer=None):
    """(optimizer, scheduler, the learning rates of every group after each of ``epochs`` steps)."""
    if optimizer is None:
        optimizer = torch.optim.Adam([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": cfg.train.lr * mult}
                                      for mult in groups])
    scheduler = build_scheduler(cfg, optimizer)
    rates = []
    for _ in range(epochs):
        optimizer.step()
        scheduler.step()
        rates.append([group["lr"] for group in optimizer.param_groups])
    return optimizer, scheduler, rates


@pytest.mark.parametrize("schedule", ["warmup_multi_step", "multi_step", "single_step", "cosine"])
def test_a_resumed_schedule_at_a_new_learning_rate_is_the_schedule_of_that_rate(schedule):
    """Resumed at epoch 4 with train.lr x5, every group follows from there the rates a run
    started at the new rate would have: each schedule here is proportional to its base rate."""
    opts = ["train.lr_scheduler", schedule, "train.stepsize", "[3, 6]", "train.max_epoch", "9"]
    old_cfg = build_config(demo_config_path("baseline"), opts + ["train.lr", "0.002"])
    new_cfg = build_config(demo_config_path("baseline"), opts + ["train.lr", "0.01"])
    groups = (1.0, 0.1)
    optimizer, scheduler, _ = scheduled_rates(old_cfg, groups, 4)
    saved = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}

    resumed_optimizer = torch.optim.Adam([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": new_cfg.train.lr * m}
                                          for m in groups])
    resumed_scheduler = build_scheduler(new_cfg, resumed_optimizer)
    engine = type("Engine", (), {"_optims": {"model": resumed_optimizer}, "_scheds": {"model": resumed_scheduler},
                                 "get_model_names": lambda self: ["model"]})()
    asked = asked_learning_rates(engine)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_scheduler.load_state_dict(saved["scheduler"])
    assert apply_learning_rates(engine, asked).startswith(
        "Resume: learning rates of this config: 2 parameter groups from initial 0.002 to 0.01 (x5)")
    resumed = []
    for _ in range(5):
        resumed_optimizer.step()
        resumed_scheduler.step()
        resumed.append([group["lr"] for group in resumed_optimizer.param_groups])
    _, _, fresh = scheduled_rates(new_cfg, groups, 9)
    for got, want in zip(resumed, fresh[4:]):
        assert got == pytest.approx(want, rel=1e-12)
    assert apply_learning_rates(engine, asked) is None  # already this config's rates
