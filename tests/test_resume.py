"""Exact resume: a run killed with SIGKILL mid-epoch and resumed from its last checkpoint ends
with the same bits as a run that was never interrupted (CPU, workers 0)."""
import os
import re
import signal
import subprocess
import sys

import torch

from dcac_plugin.cli import demo_config_path
from dcac_plugin.checkpoint import load_checkpoint

EPOCHS = 2


def train_command(data_root, save_dir, *opts):
    return [sys.executable, "-m", "dcac_plugin.cli", "train", "--config-file", demo_config_path("dcac"),
            "--root", data_root, "data.save_dir", str(save_dir), "train.max_epoch", str(EPOCHS),
            "train.print_freq", "4", *opts]


def environment():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def assert_same_bits(a, b, where="state"):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys differ"
        for key in a:
            assert_same_bits(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_bits(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run_bitwise(data_root, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(train_command(data_root, straight), check=True, env=environment(), capture_output=True)

    # Second run: SIGKILL as soon as epoch 2 has taken a few steps (after epoch 1's checkpoint).
    process = subprocess.Popen(train_command(data_root, killed), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env=environment())
    seen = []
    for line in process.stdout:
        seen.append(line)
        if re.match(rf"epoch: \[2/{EPOCHS}\]\[4/", line):
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL, "".join(seen[-20:])
    interrupted = load_checkpoint(str(killed / "model" / "latest.pth.tar"))
    assert interrupted["epoch"] == 1  # what it resumes from: the end of epoch 1
    assert not (killed / "encoder.safetensors").exists()

    resumed = subprocess.run(train_command(data_root, killed, "model.resume", str(killed)), env=environment(),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stdout and "at epoch 1" in resumed.stdout
    assert f"epoch: [1/{EPOCHS}]" not in resumed.stdout  # it did not train epoch 1 again

    final_straight = load_checkpoint(str(straight / "model" / "latest.pth.tar"))
    final_resumed = load_checkpoint(str(killed / "model" / "latest.pth.tar"))
    assert final_resumed["epoch"] == final_straight["epoch"] == EPOCHS
    for part in ("state_dict", "optimizer", "scheduler", "engine_state", "rng", "results"):
        assert_same_bits(final_straight[part], final_resumed[part], part)
    # The diffusion branch (prompts and LoRA) and the PCL memory are part of what matched.
    assert final_straight["engine_state"]["diffusion"] and "pcl_memory" in final_straight["engine_state"]
