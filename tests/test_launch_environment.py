"""The torchrun environment (issue 26, BAD 4 and 5): an inconsistent one is one line before any
work, a missing rank is reported after a short rendezvous timeout (naming how many arrived), Ctrl-C
works while waiting, and a lock left by a process killed while waiting is taken over.

Every case checks the message, the exit status and what was left in the save_dir (nothing)."""
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from conftest import train_error

from dcac_config.errors import UsageError
from dcac_config.run_folder.run_lock import LOCK_NAME, read_owner
from dcac_config.shipped import demo_config_path
from dcac_plugin.cli import main
from dcac_plugin.utils import distributed

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.fixture
def launch_env(monkeypatch):
    """Sets torchrun's variables for one test (any not given are unset)."""
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def setting(**variables):
        for name, value in variables.items():
            monkeypatch.setenv(name, str(value))

    return setting


@pytest.mark.parametrize("variables, expected", [
    ({"RANK": 1}, "RANK is 1 but WORLD_SIZE is not set: a process of a distributed run needs both."),
    ({"WORLD_SIZE": 2}, "WORLD_SIZE is 2 but RANK is not set"),
    ({"RANK": 2, "WORLD_SIZE": 2}, "RANK 2 is not below WORLD_SIZE 2 (ranks are 0..WORLD_SIZE-1)."),
    ({"LOCAL_RANK": 0}, "LOCAL_RANK is 0 but RANK and WORLD_SIZE are not set: torchrun sets all three."),
    ({"RANK": "one", "WORLD_SIZE": 2}, "Environment variable RANK is 'one', not a whole number."),
    ({"RANK": 0, "WORLD_SIZE": 0}, "Environment variable WORLD_SIZE is 0; it must be at least 1."),
    ({"RANK": 1, "WORLD_SIZE": 2, "LOCAL_RANK": -1}, "Environment variable LOCAL_RANK is -1; it must be at least 0."),
    ({"RANK": 1, "WORLD_SIZE": 4, "LOCAL_RANK": 2}, "LOCAL_RANK 2 is above RANK 1"),
    ({"RANK": 3, "WORLD_SIZE": 4, "LOCAL_RANK": 2, "LOCAL_WORLD_SIZE": 2},
     "LOCAL_RANK 2 is not below LOCAL_WORLD_SIZE 2."),
    ({"RANK": 0, "WORLD_SIZE": 2}, "WORLD_SIZE is 2 but MASTER_ADDR is not set"),
    ({"RANK": 0, "WORLD_SIZE": 2, "MASTER_ADDR": "localhost", "MASTER_PORT": "http"},
     "Environment variable MASTER_PORT is 'http', not a whole number."),
    ({"RANK": 0, "WORLD_SIZE": 2, "MASTER_ADDR": "localhost", "MASTER_PORT": 70000},
     "MASTER_PORT is '70000': set it to a free TCP port (1..65535)"),
    ({"RANK": 0, "WORLD_SIZE": 2, "MASTER_ADDR": "no-such-host.invalid", "MASTER_PORT": 29500},
     "MASTER_ADDR 'no-such-host.invalid' is no host this machine can find"),
], ids=["stray RANK=1", "WORLD_SIZE alone", "RANK >= WORLD_SIZE", "LOCAL_RANK alone", "RANK not a number",
        "WORLD_SIZE 0", "LOCAL_RANK negative", "LOCAL_RANK above RANK", "LOCAL_RANK >= LOCAL_WORLD_SIZE",
        "no MASTER_ADDR", "MASTER_PORT not a number", "MASTER_PORT out of range", "MASTER_ADDR unknown"])
def test_an_inconsistent_torchrun_environment_is_one_line_before_any_work(launch_env, variables, expected, tmp_path,
                                                                           capsys):
    launch_env(**variables)
    # train_error checks: exit status 2, one line, no traceback, neither the save_dir nor the data written.
    message = train_error(tmp_path, capsys, "train.max_epoch", "1")
    assert expected in message
    assert message.endswith(".")


def test_a_stray_rank_never_writes_into_a_live_runs_folder(launch_env, baseline_run, data_root, capsys):
    """The reported case: RANK=1 alone wrote a checkpoint into another run's folder, with
    data.overwrite True, skipping the lock, the log and config.yaml."""
    from test_no_overwrite import digests

    before = digests(baseline_run)
    launch_env(RANK=1)
    assert main(["train", "--config-file", demo_config_path("baseline"), "--root", data_root, "data.save_dir",
                 baseline_run, "data.overwrite", "True"]) == 2
    assert capsys.readouterr().err.startswith("dcac: error: RANK is 1 but WORLD_SIZE is not set")
    assert digests(baseline_run) == before


def test_a_rank_whose_peers_never_come_says_how_many_arrived_after_the_rendezvous_timeout(launch_env, data_root,
                                                                                        tmp_path, capsys):
    launch_env(RANK=0, WORLD_SIZE=3, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    save_dir = tmp_path / "run"
    assert main(["train", "--config-file", demo_config_path("baseline"), "--root", data_root, "data.save_dir",
                 str(save_dir), "train.dist_rendezvous_minutes", "0.02"]) == 2
    captured = capsys.readouterr()
    assert "Distributed: waiting for 3 processes at 127.0.0.1:" in captured.out
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert "only 1 of 3 processes (WORLD_SIZE) reached the rendezvous" in captured.err
    assert "within 1.2 s (train.dist_rendezvous_minutes). Start every rank" in captured.err
    # It had taken the lock and begun its log in a folder it created: a failed start leaves nothing.
    assert not save_dir.exists()


def test_a_rank_above_0_without_rank_0_writes_nothing_and_names_the_address(launch_env, data_root, tmp_path,
                                                                           capsys):
    port = free_port()
    launch_env(RANK=1, WORLD_SIZE=2, LOCAL_RANK=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    assert main(["train", "--config-file", demo_config_path("baseline"), "--root", data_root, "data.save_dir",
                 str(tmp_path / "run"), "train.dist_rendezvous_minutes", "0.02"]) == 2
    err = capsys.readouterr().err
    assert f"rank 1 found no rendezvous at MASTER_ADDR:MASTER_PORT 127.0.0.1:{port} within 1.2 s" in err
    assert err.count("\n") == 1 and "Traceback" not in err and "[c10d]" not in err
    assert not (tmp_path / "run").exists()


def test_rendezvous_timeout_is_a_checked_config_value(tmp_path, capsys):
    assert train_error(tmp_path, capsys, "train.dist_rendezvous_minutes", "0") == (
        "train.dist_rendezvous_minutes is 0.0; it must be a finite number above 0.")


JOIN = textwrap.dedent('''
    import sys
    import torch
    import torch.distributed as dist
    from dcac_plugin import distributed

    info = distributed.init_distributed(use_gpu=False, backend="gloo", timeout_minutes=1, rendezvous_minutes=1)
    value = torch.tensor([info.rank + 1])
    dist.all_reduce(value)
    print(f"rank {info.rank} of {info.world_size}: sum {int(value)}")
    distributed.destroy()
''')


def test_processes_started_by_hand_meet_at_the_rendezvous_and_run_collectives(tmp_path):
    """The same rendezvous torchrun's processes go through, without torchrun's agent (rank 0 hosts
    the store)."""
    script = tmp_path / "join.py"
    script.write_text(JOIN)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    processes = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env={**base, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                                                  "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                                  "OMP_NUM_THREADS": "1"})
                 for rank in (0, 1)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert "rank 0 of 2: sum 3" in outputs[0] and "rank 1 of 2: sum 3" in outputs[1]


def waiting_rank0(save_dir, data_root) -> subprocess.Popen:
    """``dcac train`` as rank 0 of 2 whose peer never comes, once it waits at the rendezvous (its
    lock taken, its log begun). SIGINT is given its default handling back: a shell starts
    background jobs with it ignored, and the child would inherit that."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env.update(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "dcac_plugin.cli", "train", "--config-file", demo_config_path("baseline"), "--root",
         data_root, "data.save_dir", str(save_dir), "train.dist_rendezvous_minutes", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in process.stdout:
        if "Distributed: waiting for 2 processes" in line:
            break
    assert (save_dir / LOCK_NAME).is_file()
    return process


def test_ctrl_c_while_waiting_for_a_missing_rank_ends_at_once_in_one_line(data_root, tmp_path):
    save_dir = tmp_path / "run"
    process = waiting_rank0(save_dir, data_root)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err == (f"dcac: error: Interrupted (Ctrl-C): the run stopped before it started (it had not written its "
                   f"config.yaml to {save_dir}); run the same command again.\n")
    assert not save_dir.exists()  # lock, log and the folder it created: gone


def test_a_lock_left_by_a_rank_killed_while_waiting_is_taken_over(data_root, tmp_path, capsys):
    save_dir = tmp_path / "run"
    process = waiting_rank0(save_dir, data_root)
    process.kill()
    process.communicate(timeout=60)
    lock = save_dir / LOCK_NAME
    assert read_owner(lock.read_bytes()).pid == process.pid  # SIGKILL: nothing could clean up
    assert main(["train", "--config-file", demo_config_path("baseline"), "--root", data_root, "data.save_dir",
                 str(save_dir), "train.max_epoch", "1", "train.print_freq", "100"]) == 0
    out = capsys.readouterr().out
    assert f"Note: taking over the lock {lock} of a run that is no longer running (pid {process.pid}@" in out
    assert not lock.exists() and (save_dir / "results.json").is_file()


def test_launched_info_is_rank_0_of_1_without_torchrun(launch_env):
    assert distributed.launched_info() == distributed.DistInfo(0, 1, 0)
    launch_env(RANK=1, WORLD_SIZE=2, LOCAL_RANK=0, LOCAL_WORLD_SIZE=1)  # rank 1 on a second machine
    assert distributed.launched_info() == distributed.DistInfo(1, 2, 0)
    launch_env(RANK=1, WORLD_SIZE=1)
    with pytest.raises(UsageError, match="RANK 1 is not below WORLD_SIZE 1"):
        distributed.launched_info()
