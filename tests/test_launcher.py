import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from dcac_config.shipped import demo_config_path
from dcac_plugin.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained_run(data_root, tmp_path_factory):
    save_dir = str(tmp_path_factory.mktemp("run"))
    code = main(["train", "--config-file", demo_config_path("baseline"), "--root", data_root,
                 "data.save_dir", save_dir, "train.max_epoch", "2", "train.print_freq", "100"])
    assert code == 0
    return save_dir


def test_train_writes_checkpoint_and_reports_metrics(trained_run):
    ckpt_path = os.path.join(trained_run, "model", "model.pth.tar-2")
    assert os.path.isfile(ckpt_path)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # safe loading works
    assert state["epoch"] == 2 and isinstance(state["rank1"], float)
    assert "backbone.conv1.weight" in state["state_dict"] and "classifier.weight" in state["state_dict"]
    memory = state["engine_state"]["pcl_memory"]
    assert memory.shape == (64, 64)  # 64 training identities of synthetic_a, 64-d tiny features
    torch.testing.assert_close(memory.norm(dim=1), torch.ones(64))
    summary = json.load(open(os.path.join(trained_run, "results.json")))
    metrics = summary["results"]["synthetic_b"]
    assert 0.0 < metrics["mAP"] <= 1.0 and 0.0 <= metrics["rank1"] <= 1.0 and 0.0 < metrics["mINP"] <= 1.0
    assert metrics["rank1"] == pytest.approx(state["rank1"])
    assert any(name.startswith("train.log") for name in os.listdir(trained_run))


# The last checkpoint; the test-time encoder the run exported (no classifier); the run folder, which stands for
# that encoder.
@pytest.mark.parametrize("weights, loaded", [(os.path.join("model", "model.pth.tar-2"),) * 2,
                                             ("encoder.safetensors",) * 2, ("", "encoder.safetensors")],
                         ids=["checkpoint", "encoder", "run folder"])
def test_evaluate_only_with_load_weights_reproduces_metrics(weights, loaded, trained_run, data_root, tmp_path, capsys):
    summary = json.load(open(os.path.join(trained_run, "results.json")))
    code = main(["train", "--config-file", demo_config_path("baseline"), "--root", data_root,
                 "data.save_dir", str(tmp_path), "test.evaluate", "True",
                 "model.load_weights", os.path.join(trained_run, weights)])
    assert code == 0
    again = json.load(open(tmp_path / "results.json"))["results"]["synthetic_b"]
    assert again["mAP"] == pytest.approx(summary["results"]["synthetic_b"]["mAP"], abs=1e-6)
    assert again["rank1"] == pytest.approx(summary["results"]["synthetic_b"]["rank1"], abs=1e-6)
    out = capsys.readouterr().out
    assert f"Loaded weights from {os.path.join(trained_run, loaded)}" in out
    assert "| baseline | clip_vit_tiny | synthetic_a -> synthetic_b |" in out
    assert not any(name.startswith("model") for name in os.listdir(tmp_path))  # no training, no checkpoint


def test_config_errors_exit_cleanly(data_root, capsys):
    code = main(["train", "--config-file", demo_config_path("baseline"), "--root", data_root, "train.lrr", "0.1"])
    assert code == 2
    assert "Did you mean 'train.lr'" in capsys.readouterr().err


def test_scripts_main_is_a_torchreid_style_launcher(data_root, tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "main.py"), "--config-file", demo_config_path("softmax"),
         "-s", "synthetic_a", "-t", "synthetic_b", "--root", data_root, "data.save_dir", str(tmp_path),
         "train.max_epoch", "1", "train.print_freq", "100"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.load(open(tmp_path / "results.json"))
    assert results["engine"] == "softmax" and results["model"] == "osnet_x0_25"
    assert os.path.isfile(tmp_path / "model" / "model.pth.tar-1")
    assert "| softmax | osnet_x0_25 | synthetic_a -> synthetic_b |" in proc.stdout


def test_demo_prints_and_writes_the_results_table(data_root, tmp_path, capsys):
    # The overrides straight after the engine names (the flags after them end the list).
    code = main(["demo", "--engines", "baseline", "softmax", "train.max_epoch", "1", "train.print_freq", "100",
                 "--root", data_root, "--save-dir", str(tmp_path)])
    assert code == 0
    for engine in ("baseline", "softmax"):  # one epoch each (the demo configs train 12)
        assert yaml.safe_load((tmp_path / engine / "config.yaml").read_text())["train"]["max_epoch"] == 1
        assert [n for n in os.listdir(tmp_path / engine / "model") if n.startswith("model.pth.tar-")] == ["model.pth.tar-1"]
    table = (tmp_path / "demo_results.md").read_text().splitlines()
    assert table[0] == "| engine | model | source -> target | mAP | Rank-1 |"
    rows = [line.split("|")[1:-1] for line in table[2:]]
    assert [r[0].strip() for r in rows] == ["baseline", "softmax"]
    for row in rows:
        mAP, rank1 = float(row[3]), float(row[4])
        assert 0.0 < mAP <= 100.0 and 0.0 <= rank1 <= 100.0
        engine = row[0].strip()
        saved = json.load(open(tmp_path / engine / "results.json"))["results"]["synthetic_b"]
        assert mAP == pytest.approx(100 * saved["mAP"], abs=0.05)
    assert "\n".join(table) in capsys.readouterr().out


def test_training_logs_every_loss_term_and_each_evaluation_once_to_tensorboard(trained_run):
    from dcac_plugin.tools.visualize.curves import plot_training_curves, read_scalars

    scalars = read_scalars(trained_run)
    assert {"Train/loss_id", "Train/loss_pcl", "Train/loss", "Train/lr"} <= set(scalars)
    steps = [step for step, _ in scalars["Train/loss_pcl"]]
    assert steps == sorted(steps) and len(steps) >= 2
    summary = json.load(open(os.path.join(trained_run, "results.json")))["results"]["synthetic_b"]
    # One point per evaluation, at the epoch the checkpoint names (the final test after epoch 2).
    assert [step for step, _ in scalars["Test/synthetic_b/mAP"]] == [2]
    assert scalars["Test/synthetic_b/mAP"][0][1] == pytest.approx(summary["mAP"], abs=1e-6)
    assert scalars["Test/synthetic_b/rank1"][0][1] == pytest.approx(summary["rank1"], abs=1e-6)
    written = plot_training_curves(trained_run, os.path.join(trained_run, "curves"))
    assert [os.path.basename(p) for p in written] == ["losses.png", "lr.png", "evaluation.png"]


def test_a_real_run_trains_each_epoch_at_the_authors_warm_up_rate(trained_run):
    from dcac_plugin.tools.visualize.curves import read_scalars

    # demo_baseline: lr 0.001, 2 warm-up epochs from 0.1x. The authors' scheduler, stepped with
    # the 1-based epoch before it: epoch 1 at 0.001 x (0.1 x 0.5 + 0.5), epoch 2 at the full rate.
    rates = [value for _, value in sorted(read_scalars(trained_run)["Train/lr"])]
    epoch_1 = rates[:rates.index(max(rates))]
    assert epoch_1 and epoch_1 == pytest.approx([5.5e-4] * len(epoch_1), rel=1e-6)
    assert rates[len(epoch_1):] == pytest.approx([1e-3] * len(epoch_1), rel=1e-6)
    assert len(rates) == 2 * len(epoch_1)  # as many steps in each epoch


def test_toolbox_triplet_engine_trains_and_checks_its_loss_terms(data_root, tmp_path):
    # torchreid's triplet engine reports loss_t / loss_x (no `loss`); our finiteness check reads all terms.
    code = main(["train", "--config-file", demo_config_path("softmax"), "--root", data_root,
                 "data.save_dir", str(tmp_path), "engine", "triplet", "loss.name", "triplet",
                 "sampler.train_sampler", "RandomIdentitySampler", "train.max_epoch", "1", "train.print_freq", "100"])
    assert code == 0
    summary = json.load(open(tmp_path / "results.json"))
    assert summary["engine"] == "triplet" and 0 < summary["results"]["synthetic_b"]["mAP"] <= 1
