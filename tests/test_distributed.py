"""torchrun: the distributed identity sampler, and 2 gloo processes training the tiny dcac config."""
import glob
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

from dcac_config.shipped import demo_config_path
from dcac_plugin.data.samplers import DistributedIdentitySampler, build_train_sampler
from dcac_plugin.utils.checkpoint import load_checkpoint

# 30 identities with 3 to 9 images each (index -> pid).
ITEMS = [(f"img{pid}_{k}.jpg", pid, k % 2, 0) for pid in range(30) for k in range(3 + pid % 7)]


def samplers(world_size, batch_size=8, num_instances=2, seed=3):
    return [DistributedIdentitySampler(ITEMS, batch_size, num_instances, rank, world_size, seed=seed)
            for rank in range(world_size)]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_pk_batches_of_disjoint_identities_every_epoch(world_size):
    ranks = samplers(world_size)
    for epoch in range(4):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        lengths = {len(sampler) for sampler in ranks}
        assert len(lengths) == 1 and lengths.pop() > 0  # DDP steps in lockstep
        identity_sets = []
        for sampler in ranks:
            indices = list(sampler)
            assert len(indices) == len(sampler) and len(indices) % 8 == 0
            for start in range(0, len(indices), 8):
                batch_pids = Counter(ITEMS[i][1] for i in indices[start:start + 8])
                assert len(batch_pids) == 4 and set(batch_pids.values()) == {2}  # P=4 identities x K=2
            identity_sets.append({ITEMS[i][1] for i in indices})
            assert identity_sets[-1] == set(sampler.rank_identities())
        for a in range(world_size):
            for b in range(a + 1, world_size):
                assert not identity_sets[a] & identity_sets[b]


def test_split_changes_with_the_epoch_and_is_reproduced_from_its_state():
    first = samplers(2)[0]
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0
    again = DistributedIdentitySampler(ITEMS, 8, 2, 0, 2, seed=3)
    again.load_state_dict(first.state_dict())
    assert list(again) == list(first)


def test_sampler_errors_name_the_keys_to_change():
    with pytest.raises(ValueError, match="multiple of sampler.num_instances"):
        DistributedIdentitySampler(ITEMS, 9, 2, 0, 2)
    with pytest.raises(ValueError, match="train.batch_size"):
        DistributedIdentitySampler(ITEMS, 64, 2, 0, 2)  # 32 identities per batch x 2 ranks > 30
    with pytest.raises(ValueError, match="no distributed version"):
        build_train_sampler(ITEMS, "RandomDomainSampler", 8, world_size=2)
    with pytest.raises(ValueError, match="at least batch_size / num_instances"):
        build_train_sampler(ITEMS, "RandomIdentitySampler", 128, 2)


def test_torchrun_two_gloo_processes_train_once_log_once_and_keep_memories_identical(data_root, tmp_path):
    save_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "dcac_plugin.cli", "train", "--config-file", demo_config_path("dcac"), "--root", data_root,
               "data.save_dir", str(save_dir), "train.max_epoch", "2", "train.batch_size", "16",
               "train.print_freq", "100"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout

    assert "Distributed: 2 processes (gloo)" in out
    # The engine gathers both ranks' memories after every epoch and stops if they differ.
    for epoch in (1, 2):
        assert out.count(f"PCL memory identical on all 2 ranks after epoch {epoch}") == 1
    # The latent cache is encoded once, by rank 0; rank 1 reads it.
    assert out.count("encoded now") == 1 and "1024 images, 1024 encoded now" in out
    # Metrics and checkpoints once.
    assert out.count("** Results **") == 1 and out.count("| dcac | clip_vit_tiny |") == 1
    assert out.count("Checkpoint saved:") == 3  # latest after epochs 1 and 2, then after the final test
    assert sorted(os.listdir(save_dir / "model")) == ["best.pth.tar", "latest.pth.tar", "model.pth.tar-2"]
    assert len(glob.glob(str(save_dir / "events.out.tfevents.*"))) == 1
    assert len(glob.glob(str(save_dir / "train.log-*"))) == 1

    state = load_checkpoint(str(save_dir / "model" / "latest.pth.tar"))
    assert len(state["rng"]) == 2  # each rank's generators, for an exact resume
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert state["results"]["synthetic_b"]["epoch"] == 2


def test_torchrun_resume_matches_an_uninterrupted_two_process_run_bitwise(data_root, tmp_path):
    """Per-rank RNG states and rank 0's BatchNorm statistics make a 2-process resume exact too."""

    def torchrun(save_dir, *opts):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "dcac_plugin.cli", "train", "--config-file", demo_config_path("baseline"), "--root",
                   data_root, "data.save_dir", str(save_dir), "train.batch_size", "16", "train.print_freq", "100",
                   *opts]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    torchrun(tmp_path / "straight", "train.max_epoch", "2")
    torchrun(tmp_path / "stopped", "train.max_epoch", "1")  # as if the job had ended after epoch 1
    out = torchrun(tmp_path / "stopped", "train.max_epoch", "2", "model.resume", str(tmp_path / "stopped"))
    assert "Resumed from" in out and "epoch: [1/2]" not in out
    straight = load_checkpoint(str(tmp_path / "straight" / "model" / "latest.pth.tar"))
    resumed = load_checkpoint(str(tmp_path / "stopped" / "model" / "latest.pth.tar"))
    assert straight["epoch"] == resumed["epoch"] == 2
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert torch.equal(straight["engine_state"]["pcl_memory"], resumed["engine_state"]["pcl_memory"])
    for rank in (0, 1):
        assert torch.equal(straight["rng"][rank]["torch"], resumed["rng"][rank]["torch"])


def test_processes_get_their_local_ranks_gpu_and_gloo_shares_gpus_where_there_are_fewer():
    from dcac_config.errors import UsageError
    from dcac_plugin.utils.distributed import process_gpu

    assert [process_gpu(rank, 4, "nccl") for rank in range(4)] == [0, 1, 2, 3]
    # Two processes on a one-GPU machine (the device check's DDP run): gloo puts both on GPU 0.
    assert [process_gpu(rank, 1, "gloo") for rank in range(2)] == [0, 0]
    assert [process_gpu(rank, 2, "gloo") for rank in range(4)] == [0, 1, 0, 1]
    with pytest.raises(UsageError, match=r"LOCAL_RANK 1 but 1 GPU\(s\) visible: nccl needs one GPU per process"):
        process_gpu(1, 1, "nccl")
