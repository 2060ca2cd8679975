"""``scripts/device_check.sh`` (every GPU figure in one run) and ``dcac bench eval --device``.

The script's GPU path runs only on a GPU machine; here it is checked in pieces: on this CPU
machine the script says so in one line, runs its quick CPU checks and reports the GPU steps as
skipped; ``--dry-run`` prints every GPU command and each one is accepted by the parsers that will
read it; with ``DEVICE_CHECK_ASSUME_GPU=1`` and stand-in commands, the GPU path records ok,
failed and timed-out steps, carries on after them, keeps to its time budget and reads the
figures from each step's output.
"""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

import dcac_cli
from dcac_plugin import device_check
from dcac_plugin.benchmarks import eval_bench
from dcac_plugin.benchmarks.eval_bench import SplitShape

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "scripts", "device_check.sh")
DELIMITER = "----- device_check summary (JSON) -----"
GPU_STEPS = ["bench_train_bf16", "bench_train_fp16", "bench_eval_cuda", "train_amp_bf16", "torchrun_nccl", "pytest_cuda"]
CPU_STEPS = ["bench_eval_cpu_plumbing", "bench_eval_cuda_refused", "gpu_commands_parse"]
# Tensor inputs on every device this machine has (CUDA where present), as in test_evaluation.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def script_env(tmp_path, **extra):
    """The script's environment: HOME, TMPDIR and caches inside ``tmp_path``, this Python first, and no
    carried wheels (a checkout's ``.whl/`` is not installed)."""
    env = dict(os.environ)
    for name in ("OUT", "DEVICE_CHECK_ASSUME_GPU", "DEVICE_CHECK_DCAC", "DEVICE_CHECK_TORCHRUN",
                 "DEVICE_CHECK_SKIP_DEPS"):
        env.pop(name, None)
    for name in ("home", "tmp", "cache"):
        (tmp_path / name).mkdir(exist_ok=True)
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               DCAC_CACHE=str(tmp_path / "cache" / "dcac-reid"), MPLCONFIGDIR=str(tmp_path / "cache" / "mpl"),
               HF_HUB_OFFLINE="1", PYTHON=sys.executable, DEVICE_CHECK_WHEELS=str(tmp_path / "no-wheels"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    env.update(extra)
    return env


def run_script(tmp_path, *args, **extra):
    done = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env=script_env(tmp_path, **extra))
    assert DELIMITER in done.stdout, done.stdout + done.stderr
    head, _, body = done.stdout.partition(DELIMITER + "\n")
    return done, head.splitlines(), json.loads(body)


def assert_inside(path, folder):
    assert os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder), path


# ----------------------------------------------------------------------------- the script on this CPU machine


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the script would take its GPU path (minutes)")
    tmp_path = tmp_path_factory.mktemp("device-check-cpu")
    return tmp_path, *run_script(tmp_path)


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(cpu_run):
    tmp_path, done, head, summary = cpu_run
    assert done.returncode == 0, done.stderr
    assert len(head) == 1 and head[0].startswith("device_check: no CUDA GPU here (")
    assert "torch.cuda.is_available() is False" in head[0]
    assert summary["mode"] == "cpu" and summary["gpu_available"] is False and summary["exit_status"] == 0
    assert "torch.cuda.is_available() is False" in summary["reason"]
    assert list(summary["steps"]) == GPU_STEPS + CPU_STEPS
    assert summary["counts"] == {"skipped": len(GPU_STEPS), "ok": len(CPU_STEPS)}


def test_without_a_gpu_the_gpu_steps_are_skipped_with_the_reason_and_their_commands_checked(cpu_run):
    _, _, _, summary = cpu_run
    for name in GPU_STEPS:
        step = summary["steps"][name]
        assert step["status"] == "skipped" and step["gpu"] is True
        assert step["reason"].startswith("no CUDA GPU: torch.cuda.is_available() is False")
        assert step["validation"]["valid"] is True, step["validation"]
        assert step["validation"]["command"] == step["command"]
        assert "figures" not in step  # nothing ran


def test_without_a_gpu_the_cpu_checks_ran_the_real_commands(cpu_run):
    tmp_path, _, _, summary = cpu_run
    steps = summary["steps"]
    plumbing = steps["bench_eval_cpu_plumbing"]
    assert plumbing["status"] == "ok" and plumbing["rc"] == 0
    assert plumbing["figures"]["device"] == "cpu" and plumbing["figures"]["device_name"].startswith("cpu (")
    refused = steps["bench_eval_cuda_refused"]
    assert refused["status"] == "ok" and refused["rc"] == 2
    assert refused["figures"]["error_line"] == ("dcac: error: Device 'cuda', but torch sees no CUDA device here; "
                                                "use --device cpu.")
    assert steps["gpu_commands_parse"]["figures"]["all_valid"] is True
    # Logs and the summary file in the temporary folder the script made under TMPDIR, none elsewhere.
    assert_inside(summary["work_dir"], tmp_path / "tmp")
    assert summary["log_dir"] == summary["work_dir"]
    with open(os.path.join(summary["log_dir"], "device_check.json"), encoding="utf-8") as handle:
        assert json.load(handle) == summary
    for log in plumbing["log"].values():
        assert_inside(log, summary["work_dir"])
    assert "===== bench_eval_cuda_refused: ok (rc 2" in open(os.path.join(summary["log_dir"], "device_check.log")).read()


# ----------------------------------------------------------------------------- --dry-run


def test_dry_run_prints_every_gpu_command_and_each_is_accepted_by_its_parsers(tmp_path):
    done, head, summary = run_script(tmp_path, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert head[0].startswith("device_check: dry run: the GPU steps' commands, printed and checked, none run")
    printed = dict(line.strip().split(": ", 1) for line in head[1:])
    assert list(printed) == [f"{name} (timeout {summary['steps'][name]['timeout_s']} s)" for name in GPU_STEPS]
    steps = summary["steps"]
    for name in GPU_STEPS:
        assert steps[name]["status"] == "dry-run"
        assert printed[f"{name} (timeout {steps[name]['timeout_s']} s)"] == steps[name]["command"]
        assert steps[name]["validation"]["valid"] is True, (name, steps[name]["validation"])
    assert steps["gpu_commands_parse"]["status"] == "ok"
    dcac = f"{sys.executable} -m dcac_plugin.cli"
    work = summary["work_dir"]
    assert steps["bench_train_bf16"]["command"] == (f"{dcac} bench train --device cuda --batch-size 64 --amp bf16 "
                                                    "--steps 10 --warmup 3")
    assert steps["bench_train_fp16"]["command"] == steps["bench_train_bf16"]["command"].replace("bf16", "fp16")
    assert steps["bench_eval_cuda"]["command"] == f"{dcac} bench eval --device cuda"
    assert steps["train_amp_bf16"]["command"] == (
        f"{dcac} train --config-file demo_dcac --root {work}/reid-data train.max_epoch 2 train.amp bf16 use_gpu True "
        f"data.save_dir {work}/runs/train_amp_bf16")
    torchrun = steps["torchrun_nccl"]
    assert torchrun["command"].startswith(f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node 1 "
                                          "-m dcac_plugin.cli train --config-file demo_dcac ")
    assert "train.dist_backend nccl" in torchrun["command"] and "torchrun's parser" in torchrun["validation"]["checks"][0]
    assert "WORLD_SIZE 1" in torchrun["note"]
    assert steps["pytest_cuda"]["command"].endswith("-k cuda")
    # What the GPU steps write goes to the temporary folder, never the working tree.
    assert_inside(work, tmp_path / "tmp")


# ----------------------------------------------------------------------------- the GPU path with stand-ins

FAKE_BENCH_TRAIN = {
    "device": "NVIDIA H200", "batch_size": 64, "amp": "bf16", "latent_cache": True, "lora_rank": 8,
    "gradient_checkpointing": False,
    "engines": {"baseline": {"engine": "baseline", "amp": "bf16", "median_step_s": 0.1, "step_times_s": [0.1],
                             "peak_memory_gb": 7.5, "peak_memory_kind": "cuda max allocated"},
                "dcac": {"engine": "dcac", "amp": "bf16", "median_step_s": 0.3, "step_times_s": [0.3],
                         "peak_memory_gb": 17.0, "peak_memory_kind": "cuda max allocated"}},
    "dcac_over_baseline": 3.0,
}
FAKE_DCAC = """#!/usr/bin/env bash
# A stand-in for dcac and torchrun: records its arguments, then acts the step.
n=$(ls "$FAKE_CALLS" | wc -l)
printf '%s\\0' "$@" > "$FAKE_CALLS/call$n"
case " $* " in
    *" bench train "*"--amp bf16"*)
        echo "Measuring baseline (batch 64, amp bf16, cuda) ..."
        echo "  baseline: step 1/13 0.000s (warm-up)"
        cat "$FAKE_BENCH_JSON" ;;
    *" bench train "*)
        echo "Measuring baseline (batch 64, amp fp16, cuda) ..."
        echo "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" >&2
        exit 1 ;;
    *" bench eval "*)
        sleep 120 ;;
    *" train "*)
        prev=""; for arg in "$@"; do [ "$prev" != data.save_dir ] || save=$arg; prev=$arg; done
        mkdir -p "$save"
        echo '{"engine": "dcac", "world_size": 1, "results": {"synthetic_b": {"mAP": 0.25, "rank1": 0.5, "mINP": 0.125, "epoch": 2}}}' > "$save/results.json"
        echo "  Mixed precision: bf16 (train.amp bf16, cuda)"
        echo "Elapsed 0:00:07" ;;
esac
"""


@pytest.fixture
def stand_ins(tmp_path):
    """Environment for the GPU path with stand-in dcac and torchrun commands."""
    fake = tmp_path / "fake-dcac"
    fake.write_text(FAKE_DCAC)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "calls").mkdir()
    (tmp_path / "bench.json").write_text(json.dumps(FAKE_BENCH_TRAIN, indent=2) + "\n")
    (tmp_path / "out").mkdir()
    return dict(DEVICE_CHECK_ASSUME_GPU="1", DEVICE_CHECK_DCAC=str(fake), DEVICE_CHECK_TORCHRUN=str(fake),
                FAKE_CALLS=str(tmp_path / "calls"), FAKE_BENCH_JSON=str(tmp_path / "bench.json"),
                OUT=str(tmp_path / "out"),
                DEVICE_CHECK_SKIP_DEPS="1")  # the real dependency check: tests/test_device_deps.py


def calls(tmp_path):
    folder = tmp_path / "calls"
    return [(folder / name).read_bytes().decode().split("\0")[:-1] for name in sorted(os.listdir(folder))]


def test_gpu_path_records_each_step_carries_on_after_a_failure_and_reads_the_figures(tmp_path, stand_ins):
    done, head, summary = run_script(tmp_path, "--only", "bench_train_bf16,bench_train_fp16,train_amp_bf16,torchrun_nccl",
                                     **stand_ins)
    assert done.returncode == 1  # a step failed
    assert head == ["device_check: GPU assumed (DEVICE_CHECK_ASSUME_GPU=1), torch not asked: running the GPU steps "
                    "(only bench_train_bf16 bench_train_fp16 train_amp_bf16 torchrun_nccl) within 450 s"]
    steps = summary["steps"]
    assert summary["mode"] == "gpu" and summary["gpu_available"] is True and summary["exit_status"] == 1
    assert {name: steps[name]["status"] for name in GPU_STEPS} == {
        "bench_train_bf16": "ok", "bench_train_fp16": "failed", "bench_eval_cuda": "skipped", "train_amp_bf16": "ok",
        "torchrun_nccl": "ok", "pytest_cuda": "skipped"}
    assert steps["bench_eval_cuda"]["reason"] == steps["pytest_cuda"]["reason"] == "not in --only"
    assert steps["bench_train_bf16"]["figures"] == FAKE_BENCH_TRAIN  # the benchmark's JSON, read back whole
    failed = steps["bench_train_fp16"]
    assert failed["rc"] == 1 and failed["error"].startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert failed["figures"] is None  # no JSON printed
    work = summary["work_dir"]
    for name in ("train_amp_bf16", "torchrun_nccl"):
        figures = steps[name]["figures"]
        assert figures["results"] == {"synthetic_b": {"mAP": 0.25, "rank1": 0.5, "mINP": 0.125, "epoch": 2}}
        assert figures["mixed_precision"] == "bf16 (train.amp bf16, cuda)" and figures["elapsed"] == "0:00:07"
        assert figures["save_dir"] == f"{work}/runs/{name}"
    # The stand-ins received exactly the commands the summary names, in order.
    assert [" ".join(call) for call in calls(tmp_path)] == [
        steps[name]["command"].split(" ", 1)[1] for name in ("bench_train_bf16", "bench_train_fp16", "train_amp_bf16",
                                                             "torchrun_nccl")]
    # $OUT receives two files only: the combined log and the summary.
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["device_check.json", "device_check.log"]
    assert json.loads((out / "device_check.json").read_text()) == summary
    log = (out / "device_check.log").read_text()
    assert "===== bench_train_fp16: failed (rc 1" in log and "CUDA out of memory" in log
    assert_inside(work, tmp_path / "tmp")


def test_gpu_path_stops_a_step_at_its_timeout_and_keeps_to_the_time_budget(tmp_path, stand_ins):
    done, _, summary = run_script(tmp_path, "--only", "bench_eval_cuda,train_amp_bf16", "--budget", "20",
                                  "--step-timeout", "12", **stand_ins)
    assert done.returncode == 1
    steps = summary["steps"]
    timed_out = steps["bench_eval_cuda"]
    assert timed_out["status"] == "timeout" and timed_out["rc"] == 124 and timed_out["effective_timeout_s"] == 12
    assert timed_out["reason"] == "no result within 12 s"
    # 12 of the 20 s are spent: the next step (12 s) is not started.
    assert steps["train_amp_bf16"]["status"] == "skipped"
    assert steps["train_amp_bf16"]["reason"].startswith("time budget spent: ")
    assert len(calls(tmp_path)) == 1


def test_a_terminated_run_stops_its_step_and_still_prints_the_summary(tmp_path, stand_ins):
    import time

    script = subprocess.Popen(["bash", SCRIPT, "--only", "bench_eval_cuda,train_amp_bf16"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=script_env(tmp_path, **stand_ins))
    deadline = time.monotonic() + 120
    while not calls(tmp_path) and time.monotonic() < deadline:  # the stand-in has started the step
        time.sleep(0.1)
    script.terminate()
    stdout, _ = script.communicate(timeout=120)
    assert script.returncode == 143
    summary = json.loads(stdout.partition(DELIMITER + "\n")[2])
    assert summary["note"] == "interrupted by SIGTERM" and summary["exit_status"] == 143
    assert summary["steps"]["bench_eval_cuda"]["status"] == "interrupted"
    assert summary["steps"]["train_amp_bf16"] == {**summary["steps"]["train_amp_bf16"], "status": "skipped",
                                                  "reason": "interrupted (SIGTERM) before this step"}
    assert len(calls(tmp_path)) == 1


def test_unknown_arguments_are_refused_before_anything_runs(tmp_path):
    for args, message in [(["--only", "bench_train_bf61"], "--only: unknown step 'bench_train_bf61'"),
                          (["--budget", "soon"], "--budget takes whole seconds"), (["--fast"], "unknown argument")]:
        done = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                              env=script_env(tmp_path))
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.startswith(f"device_check: {message}") and "usage: bash scripts/device_check.sh" in done.stderr
    assert not os.listdir(tmp_path / "tmp")  # no work folder made


# ----------------------------------------------------------------------------- the helper's checks and parsers


@pytest.mark.parametrize("argv,error", [
    (["py", "-m", "dcac_plugin.cli", "bench", "train", "--amp", "bf61"], "invalid choice: 'bf61'"),
    (["py", "-m", "dcac_plugin.cli", "bench", "eval", "--device", "gpu"], "--device 'gpu' is no torch device"),
    (["py", "-m", "dcac_plugin.cli", "train", "--config-file", "demo_dcac", "train.amxp", "bf16"],
     "Did you mean 'train.amp'"),
    (["py", "-m", "dcac_plugin.cli", "train", "--config-file", "demo_dcac", "train.amp", "fp8"], "train.amp"),
    (["py", "-m", "dcac_plugin.cli", "train", "--config-file", "demo_dcca"], "demo_dcac"),
    (["py", "-m", "torch.distributed.run", "--nprocs_per_node", "1", "-m", "dcac_plugin.cli", "train"], "--nprocs_per_node"),
    (["py", "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "dcac_plugin.clii", "train"],
     "-m dcac_plugin.cli"),
    (["torchrun", "--standalone", "-m", "dcac_plugin.cli", "train", "train.dist_backend", "mpi"], "use nccl or gloo"),
    (["nvidia-smi"], "no check for this kind of command"),
])
def test_a_mistyped_command_is_found_invalid(argv, error):
    result = device_check.validate_command(argv)
    assert result["valid"] is False and error in result["error"], result


def test_a_good_command_passes_each_check_it_names():
    result = device_check.validate_command(["dcac", "train", "--config-file", "demo_dcac", "--root", "/nowhere",
                                            "train.amp", "bf16", "use_gpu", "True", "train.dist_backend", "nccl"])
    assert result == {"valid": True, "checks": ["dcac's parser (train)",
                                                "config merged and checked (as dcac config / dcac train build it)"]}


def test_the_last_json_document_is_found_after_progress_lines():
    text = "Measuring ...\n  step 1 {not json}\n" + json.dumps({"a": {"b": [1, 2]}}, indent=2) + "\n"
    assert device_check.last_json_block(text) == {"a": {"b": [1, 2]}}
    assert device_check.last_json_block("noise\n" + json.dumps({"x": 1}) + "\n") == {"x": 1}
    assert device_check.last_json_block("Traceback (most recent call last):\n  ...\nValueError: no\n") is None


def test_pytest_counts_and_outcomes_are_read_from_its_summary():
    stdout = (".F\n=========================== short test summary info ============================\n"
              "PASSED tests/test_evaluation.py::test_tensors_on_each_device_give_the_numpy_result[cuda]\n"
              "FAILED tests/test_device_check.py::test_x[cuda] - AssertionError\n"
              "1 failed, 1 passed, 40 deselected in 9.87s\n")
    assert device_check.pytest_figures(stdout) == {
        "counts": {"failed": 1, "passed": 1, "deselected": 40},
        "tests": {"tests/test_evaluation.py::test_tensors_on_each_device_give_the_numpy_result[cuda]": "passed",
                  "tests/test_device_check.py::test_x[cuda]": "failed"}}


# ----------------------------------------------------------------------------- dcac bench eval --device


def bench_eval(argv, capsys):
    code = dcac_cli.main(["bench", "eval", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bench_eval_runs_on_the_cpu_by_default_and_says_where(capsys):
    assert dcac_cli.build_parser().parse_args(["bench", "eval"]).device == "cpu"
    code, out, _ = bench_eval(["--device", "cpu", "--skip-market", "--skip-msmt"], capsys)
    figures = json.loads(out)
    assert code == 0 and figures["device"] == "cpu" and figures["device_name"].startswith("cpu (")
    assert "market" not in figures and "msmt" not in figures


@pytest.mark.parametrize("device,error", [
    ("cuda", "dcac: error: Device 'cuda', but torch sees no CUDA device here; use --device cpu."),
    ("tpu", "dcac: error: Unknown device 'tpu'; use cpu or cuda."),
    ("meta", "dcac: error: Unknown device 'meta'; use cpu or cuda."),
], ids=["gpu-without-one", "tpu", "meta"])  # ids without "cuda": `-k cuda` selects the tests that need a GPU
def test_bench_eval_refuses_a_device_it_cannot_use_before_any_work(device, error, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(eval_bench, "market_benchmark", lambda *a, **k: pytest.fail("work started"))
    code, out, err = bench_eval(["--device", device, "--skip-msmt"], capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [error]


SMALL_MARKET = SplitShape(num_query=80, num_gallery=600, num_ids=40, num_cams=6, num_distractors=60)
SMALL_MSMT = SplitShape(num_query=300, num_gallery=2000, num_ids=100, num_cams=15, num_distractors=0)


@pytest.mark.parametrize("device", DEVICES)
def test_benchmark_parts_rank_on_the_chosen_device(device):
    market = eval_bench.market_benchmark(torchreid_reference=True, shape=SMALL_MARKET, device=device)
    assert market["device"] == device
    # Our ranking on this device, torchreid's python path on the CPU: the same metrics.
    assert market["max_abs_diff_cmc_python"] == 0 and market["abs_diff_mAP_python"] < 1e-12
    msmt = eval_bench.msmt_benchmark(device=device, shape=SMALL_MSMT)
    assert msmt["device"] == device and msmt["num_query"] == SMALL_MSMT.num_query
    assert ("peak_cuda_memory_gb" in msmt) == (device == "cuda")
    assert msmt["timing"] == ("one call" if device == "cpu" else
                              f"one call, after an untimed warm-up call on the first {eval_bench.CUDA_WARMUP_QUERIES} "
                              "queries")
    on_cpu = eval_bench.msmt_benchmark(device="cpu", shape=SMALL_MSMT) if device != "cpu" else msmt
    assert msmt["num_valid_queries"] == on_cpu["num_valid_queries"]
    # float32 inner products may round differently on the GPU: near-ties may swap.
    assert msmt["mAP"] == pytest.approx(on_cpu["mAP"], abs=1e-3)
    assert np.isclose(msmt["rank1"], on_cpu["rank1"], atol=1e-2)
