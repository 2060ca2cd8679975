"""Two torchrun "nodes" on this machine (``--nnodes 2 --nproc_per_node 1``, c10d rendezvous,
gloo) training the tiny dcac config: each node prepares its own disk once, the run's outputs are
written by rank 0 alone, and with shared folders no file is written by two processes.

Every process runs under an audit hook (``sys.addaudithook``) that records each file it opens for
writing and each rename, so the tests check who wrote what rather than trusting log lines.
"""
import glob
import os
import socket
import subprocess
import sys
from collections import defaultdict

import pytest

from dcac_config.shipped import demo_config_path
from dcac_plugin.utils.preparation import PROBE_PREFIX, nearest_existing_folder, preparation_rounds

AUDITED_CLI = '''
import os, sys
log = open(os.environ["DCAC_WRITE_AUDIT"] + "." + str(os.getpid()), "a", buffering=1)
rank = os.environ.get("RANK", "?")
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path, mode, flags = args
        if (mode is not None and any(c in mode for c in "wax+")) or (mode is None and flags & WRITING):
            log.write(f"{rank}\\twrite\\t{os.path.abspath(os.fsdecode(path))}\\n")
    elif event in ("os.rename", "os.replace"):
        log.write(f"{rank}\\trename\\t{os.path.abspath(os.fsdecode(args[1]))}\\n")

sys.addaudithook(audit)
from dcac_plugin.cli import main
sys.exit(main(sys.argv[1:]))
'''


def free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def node_environment(home, audit_log):
    env = {k: v for k, v in os.environ.items() if k not in ("DCAC_CACHE", "HF_HOME", "XDG_CACHE_HOME", "TORCH_HOME")}
    return {**env, "HOME": str(home), "OMP_NUM_THREADS": "1", "DCAC_WRITE_AUDIT": str(audit_log),
            "TQDM_DISABLE": "1"}


def run_two_nodes(tmp_path, cwds, homes, data_roots, nproc_per_node=1, opts=()):
    """Both torchrun launches of one job; returns [(returncode, stdout + stderr)] per node."""
    script = tmp_path / "audited_cli.py"
    script.write_text(AUDITED_CLI)
    port = free_port()
    launches = []
    for node, (cwd, home, root) in enumerate(zip(cwds, homes, data_roots)):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
                   str(nproc_per_node), "--node_rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
                   "--rdzv-id", "two-node-test", str(script), "train", "--config-file", demo_config_path("dcac"),
                   "--root", str(root), "data.save_dir", "log/run", "train.max_epoch", "1",
                   "train.batch_size", "16", "train.print_freq", "100", *opts]
        # Output to files, not pipes: a full pipe would stall one node and, through the collectives, both.
        output = open(tmp_path / f"node{node}.out", "w+", encoding="utf-8")
        launches.append((subprocess.Popen(command, cwd=cwd, env=node_environment(home, tmp_path / "audit"),
                                          stdout=output, stderr=subprocess.STDOUT, text=True), output))
    results = []
    for process, output in launches:
        code = process.wait(timeout=900)
        output.seek(0)
        results.append((code, output.read()))
        output.close()
    return results


def audit_records(tmp_path):
    """(rank, event, path) of every write and rename under ``tmp_path`` (the audit logs aside)."""
    records = []
    for log in glob.glob(str(tmp_path / "audit.*")):
        for line in open(log, encoding="utf-8"):
            rank, event, path = line.rstrip("\n").split("\t")
            if path.startswith(str(tmp_path)) and not os.path.basename(path).startswith("audit"):
                records.append((rank, event, path))
    return records


def writers(records):
    """{path: ranks that wrote or renamed onto it}; files in private temporary names left out."""
    found = defaultdict(set)
    for rank, _, path in records:
        if "/.tmp-" in path or "/.tiny-sd-" in path or PROBE_PREFIX in path:
            continue
        found[path].add(rank)
    return found


def main_node(results, cwds):
    """The index of the node whose process got global rank 0 (the rendezvous decides)."""
    mains = [i for i, cwd in enumerate(cwds) if os.path.isfile(os.path.join(cwd, "log", "run", "results.json"))]
    assert len(mains) == 1, [out[-3000:] for _, out in results]
    return mains[0]


@pytest.mark.parametrize("nproc_per_node", [1, 2])
def test_two_nodes_with_their_own_disks_prepare_each_disk_once(tmp_path, nproc_per_node):
    """Two "machines", each with its own working folder, HOME (caches) and data root: each generates
    its datasets and tiny diffusion model once, with its first process; with two processes per
    node the second reads what the first wrote."""
    cwds = [tmp_path / f"node{node}" for node in (0, 1)]
    homes = [cwd / "home" for cwd in cwds]
    for home in homes:
        home.mkdir(parents=True)
    results = run_two_nodes(tmp_path, cwds, homes, [cwd / "reid-data" for cwd in cwds], nproc_per_node)
    assert all(code == 0 for code, _ in results), [out[-3000:] for _, out in results]
    main = main_node(results, cwds)
    other = 1 - main
    out = results[main][1]
    world = 2 * nproc_per_node
    assert f"Distributed: {world} processes (gloo)" in out
    assert out.count(f"PCL memory identical on all {world} ranks after epoch 1") == 1
    # Run outputs on rank 0's disk only.
    assert sorted(os.listdir(cwds[main] / "log" / "run" / "model")) == ["best.pth.tar", "latest.pth.tar",
                                                                        "model.pth.tar-1"]
    run_files = glob.glob(str(cwds[other] / "log" / "run" / "*"))
    assert [os.path.basename(f) for f in run_files] == ["latent_cache.pth"], run_files
    records = audit_records(tmp_path)
    # Each node's files come from one process: its first (LOCAL_RANK 0); rank 0 on the main node.
    leader_ranks = set()
    for node, cwd in enumerate(cwds):
        node_writers = {rank for path, ranks in writers(records).items() if path.startswith(str(cwd)) for rank in ranks}
        assert len(node_writers) == 1, (node, node_writers)
        leader_ranks |= node_writers
        tiny = str(homes[node] / ".cache" / "dcac-reid" / "tiny-stable-diffusion")
        assert [e for _, e, p in records if p == tiny] == ["rename"]  # generated once
        cache = str(cwd / "log" / "run" / "latent_cache.pth")
        assert [e for _, e, p in records if p == cache] == ["rename"]  # encoded once
        assert glob.glob(str(cwd / "reid-data" / "synthetic_a" / "bounding_box_train" / "*.jpg"))
    assert "0" in leader_ranks and len(leader_ranks) == 2
    assert {rank for rank, _, _ in records} == leader_ranks  # the other processes wrote nothing
    assert not glob.glob(str(tmp_path / "**" / f"{PROBE_PREFIX}*"), recursive=True)
    if nproc_per_node == 1:
        resume_from_rank0s_disk(tmp_path, cwds, homes, main)


def resume_from_rank0s_disk(tmp_path, cwds, homes, main):
    """The same job continued to epoch 2 from the checkpoint that only rank 0's machine has (the
    c10d rendezvous orders the launches the same way again: rank 0 on the same "machine")."""
    results = run_two_nodes(tmp_path, cwds, homes, [cwd / "reid-data" for cwd in cwds],
                            opts=["train.max_epoch", "2", "model.resume", "log/run"])
    assert all(code == 0 for code, _ in results), [out[-3000:] for _, out in results]
    out = results[main][1]
    assert "Resumed from log/run/model/latest.pth.tar at epoch 1" in out
    assert out.count("PCL memory identical on all 2 ranks after epoch 2") == 1
    assert "model.pth.tar-2" in os.listdir(cwds[main] / "log" / "run" / "model")
    assert not os.path.exists(cwds[1 - main] / "log" / "run" / "model")


def test_two_nodes_sharing_every_folder_write_each_file_from_one_process(tmp_path):
    shared = tmp_path / "shared"
    (shared / "home").mkdir(parents=True)
    root = shared / "reid-data"
    results = run_two_nodes(tmp_path, [shared, shared], [shared / "home"] * 2, [root, root])
    assert all(code == 0 for code, _ in results), [out[-3000:] for _, out in results]
    records = audit_records(tmp_path)
    found = writers(records)
    shared_writes = {path: ranks for path, ranks in found.items() if len(ranks) > 1}
    assert not shared_writes, shared_writes
    tiny = str(shared / "home" / ".cache" / "dcac-reid" / "tiny-stable-diffusion")
    cache = str(shared / "log" / "run" / "latent_cache.pth")
    # generated and encoded once for the job, by rank 0; the other node read them
    assert [(r, e) for r, e, p in records if p == tiny] == [("0", "rename")]
    assert [(r, e) for r, e, p in records if p == cache] == [("0", "rename")]
    assert sorted(os.listdir(shared / "log" / "run" / "model")) == ["best.pth.tar", "latest.pth.tar", "model.pth.tar-1"]
    assert all(found[path] == {"0"} for path in found if "/log/run/" in path)
    assert not glob.glob(str(tmp_path / "**" / f"{PROBE_PREFIX}*"), recursive=True)


# ------------------------------------------------------------------ the rounds

def test_rounds_put_sharing_leaders_one_after_another_and_the_rest_last():
    # ranks 0-1 node A, 2-3 node B (own disk), 4-5 node C (shares with A)
    sharing = {0: frozenset({0, 4}), 1: None, 2: frozenset({2}), 3: None, 4: frozenset({0, 4}), 5: None}
    assert preparation_rounds(sharing) == {0: 0, 2: 0, 4: 1, 1: 2, 3: 2, 5: 2}
    # one machine: rank 0, then the others
    assert preparation_rounds({0: frozenset({0}), 1: None, 2: None}) == {0: 0, 1: 1, 2: 1}
    # a chain: C shares with B only, B with A only
    chain = {0: frozenset({0, 1}), 1: frozenset({0, 1, 2}), 2: frozenset({1, 2})}
    assert preparation_rounds(chain) == {0: 0, 1: 1, 2: 2}


def test_probes_go_to_the_nearest_existing_folder(tmp_path):
    assert nearest_existing_folder(str(tmp_path / "a" / "b" / "file.pth")) == str(tmp_path)
    (tmp_path / "a").mkdir()
    assert nearest_existing_folder(str(tmp_path / "a" / "b")) == str(tmp_path / "a")
    assert nearest_existing_folder(str(tmp_path / "a")) == str(tmp_path / "a")
