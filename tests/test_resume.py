"""Exact resume: a run killed with SIGKILL mid-epoch and resumed from its last checkpoint ends
with the same bits as a run that was never interrupted (CPU, workers 0); and a resume on another
number of GPUs or processes restores what matches and says what does not."""
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from dcac_config.shipped import demo_config_path
from dcac_plugin.engines.common import RunRecordMixin
from dcac_plugin.utils import distributed
from dcac_plugin.utils.checkpoint import load_checkpoint
from dcac_plugin.utils.rng import capture_rng_state, preserved_rng, restore_rng_state

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


# ------------------------------------------- resuming with another number of GPUs or processes
# On the CPU: torch.cuda is replaced by a fake with N GPUs whose generator states are one-byte
# tensors (100 + the GPU's index when captured) and that records which GPU each state was set on.

class FakeCuda:
    """torch.cuda's generator functions for ``visible`` GPUs; ``sets`` lists (GPU, state value)."""

    NAMES = ("is_available", "is_initialized", "device_count", "get_rng_state", "set_rng_state", "get_rng_state_all",
             "set_rng_state_all")

    def __init__(self, visible):
        self.visible, self.sets, self.set_all_calls = visible, [], 0

    def install(self, monkeypatch):
        for name in self.NAMES:
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        return self

    def is_available(self):
        return self.visible > 0

    def is_initialized(self):
        return self.visible > 0

    def device_count(self):
        return self.visible

    def _index(self, device):
        index = device if isinstance(device, int) else (torch.device(device).index or 0)
        if index >= self.visible:  # as torch's default_generators[index]
            raise IndexError(f"GPU {index} of {self.visible}")
        return index

    def get_rng_state(self, device="cuda"):
        return torch.tensor([100 + self._index(device)], dtype=torch.uint8)

    def set_rng_state(self, new_state, device="cuda"):
        self.sets.append((self._index(device), int(new_state[0])))

    def get_rng_state_all(self):
        return [self.get_rng_state(i) for i in range(self.visible)]

    def set_rng_state_all(self, new_states):  # torch's: one set_rng_state per saved state
        self.set_all_calls += 1
        for index, state in enumerate(new_states):
            self.set_rng_state(state, index)


def draws():
    """What the CPU generators give next (Python, numpy, torch)."""
    import random

    import numpy as np

    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


@pytest.mark.parametrize("saved,visible,note", [
    (2, 2, None),
    (4, 2, "RNG: checkpoint has CUDA generator states for 4 GPUs, 2 visible here: restored 2, the other 2 not used"),
    (2, 3, "RNG: checkpoint has CUDA generator states for 2 GPUs, 3 visible here: restored 2; 1 GPU visible beyond "
           "the checkpoint's: seeded, not restored"),
    (1, 4, "RNG: checkpoint has CUDA generator states for 1 GPU, 4 visible here: restored 1; 3 GPUs visible beyond "
           "the checkpoint's: seeded, not restored"),
    (0, 2, "RNG: the checkpoint holds no CUDA generator states (saved without CUDA): the CUDA generators of the 2 "
           "GPUs visible here start from the seed"),
    (2, 0, "RNG: checkpoint has CUDA generator states for 2 GPUs, 0 visible here: not used"),
    (0, 0, None)])
def test_cuda_states_are_restored_gpu_by_gpu_whatever_the_count(monkeypatch, saved, visible, note):
    FakeCuda(saved).install(monkeypatch)
    state = capture_rng_state()
    assert [int(s[0]) for s in state.get("cuda", [])] == [100 + i for i in range(saved)]
    expected = draws()
    draws()  # move the CPU generators on: the restore must bring them back

    resumed = FakeCuda(visible).install(monkeypatch)
    assert restore_rng_state(state) == note
    assert resumed.sets == [(i, 100 + i) for i in range(min(saved, visible))]
    assert resumed.set_all_calls == 0
    assert draws() == expected


def test_preserved_rng_restores_the_gpus_it_captured_and_says_nothing(monkeypatch, capsys):
    fake = FakeCuda(2).install(monkeypatch)
    with preserved_rng():
        draws()
    assert fake.sets == [(0, 100), (1, 101)]
    assert capsys.readouterr().out == ""


class RecordOnly(RunRecordMixin):
    """The part of an engine that ``load_training_state`` needs: no model, no loader."""

    train_loader = None

    def get_model_names(self):
        return []


def rank_states(count):
    """Per-rank RNG states as a checkpoint holds them: rank i's are those of seed i."""
    states = []
    for rank in range(count):
        torch.manual_seed(rank)
        states.append(capture_rng_state())
    return states


def stream_of_seed(seed):
    torch.manual_seed(seed)
    return torch.rand(3).tolist()


NOT_EXACT = "training continues correctly, but not bit-identically to the interrupted run\n"
TWO_SAVED_FOUR_RUN = ("RNG: the checkpoint holds the RNG states of 2 processes and this run has 4: restored for ranks "
                      "0-1; none saved for ranks 2-3, which keep their seed (train.seed + rank); " + NOT_EXACT)


@pytest.mark.parametrize("saved,world_size,rank,restored,note", [
    (2, 2, 1, True, ""),
    (4, 2, 1, True, "RNG: the checkpoint holds the RNG states of 4 processes and this run has 2: restored for ranks "
                    "0-1, not used for ranks 2-3; " + NOT_EXACT),
    (2, 4, 1, True, TWO_SAVED_FOUR_RUN),
    (2, 4, 3, False, TWO_SAVED_FOUR_RUN),
    (1, 3, 0, True, "RNG: the checkpoint holds the RNG states of 1 process and this run has 3: restored for rank 0; "
                    "none saved for ranks 1-2, which keep their seed (train.seed + rank); " + NOT_EXACT),
    (0, 1, 0, False, "RNG: the checkpoint holds no RNG states: every generator keeps the seed this run started from "
                     "(train.seed + rank); " + NOT_EXACT)])
def test_resume_restores_the_ranks_both_runs_have_and_says_what_did_not_match(monkeypatch, capsys, saved, world_size,
                                                                              rank, restored, note):
    states = rank_states(saved)
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: world_size)
    torch.manual_seed(99)  # what this process was seeded with
    RecordOnly().load_training_state({"rng": states})
    assert torch.rand(3).tolist() == stream_of_seed(rank if restored else 99)
    assert capsys.readouterr().out == note


def test_resume_says_what_became_of_the_cuda_states_of_its_rank(monkeypatch, capsys):
    FakeCuda(4).install(monkeypatch)
    states = rank_states(1)
    resumed = FakeCuda(1).install(monkeypatch)
    RecordOnly().load_training_state({"rng": states})
    assert resumed.sets == [(0, 100)]
    assert capsys.readouterr().out == ("RNG: checkpoint has CUDA generator states for 4 GPUs, 1 visible here: "
                                       "restored 1, the other 3 not used\n")
