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
from dcac_plugin.benchmarks import device_check, eval_bench
from dcac_plugin.benchmarks.eval_bench import SplitShape

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "scripts", "device_check.sh")
DELIMITER = "----- device_check summary (JSON) -----"
GPU_STEPS = ["bench_train", "bench_eval_cuda", "train_cuda", "torchrun_ddp", "pytest_cuda"]
CPU_STEPS = ["bench_eval_cpu_plumbing", "bench_eval_cuda_refused", "gpu_commands_parse"]
# Tensor inputs on every device this machine has (CUDA where present), as in test_evaluation.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# The whole script's budget: 8 minutes on one GPU.
SCRIPT_BUDGET_S = 480


def script_env(tmp_path, **extra):
    """The script's environment: HOME, TMPDIR and caches inside ``tmp_path``, this Python first,
    no carried wheels (those are for the GPU machine's Python)."""
    env = dict(os.environ)
    for name in ("OUT", "DEVICE_CHECK_ASSUME_GPU", "DEVICE_CHECK_DCAC", "DEVICE_CHECK_TORCHRUN"):
        env.pop(name, None)
    for name in ("home", "tmp", "cache", "no-wheels"):
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
    assert list(summary["steps"]) == ["dependencies"] + GPU_STEPS + CPU_STEPS
    assert summary["counts"] == {"skipped": len(GPU_STEPS), "ok": len(CPU_STEPS) + 1}


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
    # The dependency check imported the project and every dependency here.
    dependencies = steps["dependencies"]
    assert dependencies["status"] == "ok" and isinstance(dependencies["figures"], dict)
    # Logs and the summary file in the temporary folder the script made under TMPDIR, none elsewhere.
    assert_inside(summary["work_dir"], tmp_path / "tmp")
    assert summary["log_dir"] == summary["work_dir"]
    with open(os.path.join(summary["log_dir"], "device_check.json"), encoding="utf-8") as handle:
        assert json.load(handle) == summary
    for log in plumbing["log"].values():
        assert_inside(log, summary["work_dir"])
    assert "===== bench_eval_cuda_refused: ok (rc 2" in open(os.path.join(summary["log_dir"], "device_check.log")).read()


# ----------------------------------------------------------------------------- --dry-run


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("device-check-dry-run")
    return tmp_path, *run_script(tmp_path, "--dry-run")


def test_dry_run_prints_every_gpu_command_and_each_is_accepted_by_its_parsers(dry_run):
    tmp_path, done, head, summary = dry_run
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
    assert steps["dependencies"]["status"] == "skipped"
    dcac = f"{sys.executable} -m dcac_plugin.cli"
    work = summary["work_dir"]
    bench = steps["bench_train"]["command"]
    # The paper's Table 6 setting (fp16, the VAE encoding every step) and ours, at the paper's batch.
    assert bench == (f"{dcac} bench train --device cuda --batch-size 64 --settings fp16:encode fp16:cache bf16:cache "
                     f"--steps 12 --warmup 4 --plan --json-out {work}/steps/02_bench_train/figures.json")
    # No CPU timing of torchreid's reference on the GPU run.
    assert steps["bench_eval_cuda"]["command"] == f"{dcac} bench eval --device cuda --no-reference"
    assert steps["train_cuda"]["command"] == (
        f"{dcac} train --config-file demo_dcac --root {work}/reid-data train.max_epoch 2 train.amp fp16 use_gpu True "
        f"data.save_dir {work}/runs/train_cuda")
    torchrun = steps["torchrun_ddp"]
    assert torchrun["command"].startswith(f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node 2 "
                                          "-m dcac_plugin.cli train --config-file demo_dcac ")
    assert "train.dist_backend gloo" in torchrun["command"] and "torchrun's parser" in torchrun["validation"]["checks"][0]
    assert "nccl refuses two ranks on one GPU" in torchrun["note"]
    assert steps["pytest_cuda"]["command"].endswith("tests/test_device_steps.py -k cuda")
    # What the GPU steps write goes to the temporary folder, never the working tree.
    assert_inside(work, tmp_path / "tmp")


def test_the_step_timeouts_add_up_to_less_than_the_eight_minute_budget(dry_run):
    _, _, _, summary = dry_run
    steps = summary["steps"]
    assert summary["budget_s"] == SCRIPT_BUDGET_S
    total = sum(steps[name]["timeout_s"] for name in ["dependencies"] + GPU_STEPS)
    assert total < SCRIPT_BUDGET_S, total


# ----------------------------------------------------------------------------- the GPU path with stand-ins


def engine_figures(engine, amp, device="cuda:0"):
    on_gpu = device.startswith("cuda")
    return {"engine": engine, "amp": amp, "parameter_devices": [device], "median_step_s": 0.2, "step_times_s": [0.2],
            **({"median_cuda_step_s": 0.19, "cuda_step_times_s": [0.19]} if on_gpu else {}),
            "peak_memory_gb": 7.5, "peak_memory_kind": "cuda max allocated" if on_gpu else "process peak RSS"}


def bench_figures(device="cuda:0"):
    settings = {}
    for name in ("fp16:encode", "fp16:cache", "bf16:cache"):
        amp = name.split(":")[0]
        settings[name] = {"amp": amp, "latent_cache": name.endswith("cache"),
                          "engines": {engine: engine_figures(engine, amp, device) for engine in ("baseline", "dcac")},
                          "dcac_over_baseline": 1.0}
    return {"device": "NVIDIA H200", "batch_size": 64, "settings": settings}


CUDA_EVAL = {"device": "cuda", "device_name": "NVIDIA H200",
             "market": {"device": "cuda", "max_abs_diff_cmc_vs_cpu": 0.0, "abs_diff_mAP_vs_cpu": 0.0},
             "msmt": {"device": "cuda", "seconds": 1.0, "peak_cuda_memory_gb": 3.0}}
FAKE_DCAC = """#!/usr/bin/env bash
# A stand-in for dcac and torchrun: records its arguments, then acts the step.
n=$(ls "$FAKE_CALLS" | wc -l)
printf '%s\\0' "$@" > "$FAKE_CALLS/call$n"
case " $* " in
    *" bench train "*)
        prev=""; for arg in "$@"; do [ "$prev" != --json-out ] || out=$arg; prev=$arg; done
        echo "Batch 64, amp fp16, VAE every step, cuda, engines one after the other"
        echo "  baseline: step 1/16 0.200s (cuda events 0.190s) (warm-up)"
        cp "$FAKE_BENCH_JSON" "$out"
        cat "$FAKE_BENCH_JSON" ;;
    *" bench eval "*)
        if [ -n "${FAKE_EVAL_JSON:-}" ]; then cat "$FAKE_EVAL_JSON"; else sleep 120; fi ;;
    *" train "*)
        prev=""; for arg in "$@"; do [ "$prev" != data.save_dir ] || save=$arg; prev=$arg; done
        case " $* " in *" --nproc_per_node 2 "*) ranks=2 ;; *) ranks=1 ;; esac
        if [ "$ranks" = 2 ] && [ -n "${FAKE_TORCHRUN_FAILS:-}" ]; then
            echo "[rank1]: Traceback (most recent call last):" >&2
            echo "[rank1]: RuntimeError: Gloo connectFullMesh failed" >&2
            echo "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: " >&2
            echo "============================================================" >&2
            echo "dcac_plugin.cli FAILED" >&2
            echo "------------------------------------------------------------" >&2
            echo "  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html" >&2
            echo "============================================================" >&2
            exit 1
        fi
        mkdir -p "$save"
        echo "{\\"engine\\": \\"dcac\\", \\"world_size\\": $ranks, \\"results\\": {\\"synthetic_b\\": {\\"mAP\\": 0.25, \\"rank1\\": 0.5, \\"mINP\\": 0.125, \\"epoch\\": 2}}}" > "$save/results.json"
        echo "  Mixed precision: ${FAKE_PRECISION:-fp16} (train.amp fp16, ${FAKE_TRAIN_DEVICE:-cuda})"
        echo "  Weights on: ${FAKE_TRAIN_DEVICE:-cuda}:0"
        if [ "$ranks" = 2 ]; then
            echo "Distributed: 2 processes (gloo)"
            echo "PCL memory identical on all 2 ranks after epoch 1"
            echo "PCL memory identical on all 2 ranks after epoch 2"
        fi
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
    (tmp_path / "bench.json").write_text(json.dumps(bench_figures(), indent=2) + "\n")
    (tmp_path / "out").mkdir()
    return dict(DEVICE_CHECK_ASSUME_GPU="1", DEVICE_CHECK_DCAC=str(fake), DEVICE_CHECK_TORCHRUN=str(fake),
                FAKE_CALLS=str(tmp_path / "calls"), FAKE_BENCH_JSON=str(tmp_path / "bench.json"),
                OUT=str(tmp_path / "out"), PYTHON=stand_in_python(tmp_path, "echo '{\"missing\": []}' > \"$4\""))


def stand_in_python(tmp_path, deps_answer):
    """This Python, except that the dependency check (``device_check.py deps --out FILE``; the real
    one imports everything, tested in the CPU run) answers with ``deps_answer``."""
    python = tmp_path / "python-stand-in"
    python.write_text(f"#!/usr/bin/env bash\ncase \"$2\" in deps) {deps_answer} ;; *) exec {sys.executable} \"$@\" ;; "
                      "esac\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return str(python)


def calls(tmp_path):
    folder = tmp_path / "calls"
    return [(folder / name).read_bytes().decode().split("\0")[:-1] for name in sorted(os.listdir(folder))]


def test_gpu_path_records_each_step_carries_on_after_a_failure_and_reads_the_figures(tmp_path, stand_ins):
    (tmp_path / "eval.json").write_text(json.dumps(CUDA_EVAL))
    done, head, summary = run_script(tmp_path, "--only", "bench_train,bench_eval_cuda,train_cuda,torchrun_ddp",
                                     FAKE_EVAL_JSON=str(tmp_path / "eval.json"), FAKE_TORCHRUN_FAILS="1", **stand_ins)
    assert done.returncode == 1  # a step failed
    assert head == ["device_check: GPU assumed (DEVICE_CHECK_ASSUME_GPU=1), torch not asked: running the GPU steps "
                    f"(only bench_train bench_eval_cuda train_cuda torchrun_ddp) within {SCRIPT_BUDGET_S} s"]
    steps = summary["steps"]
    assert summary["mode"] == "gpu" and summary["gpu_available"] is True and summary["exit_status"] == 1
    assert steps["dependencies"]["status"] == "ok"
    assert {name: steps[name]["status"] for name in GPU_STEPS} == {
        "bench_train": "ok", "bench_eval_cuda": "ok", "train_cuda": "ok", "torchrun_ddp": "failed",
        "pytest_cuda": "skipped"}
    assert steps["pytest_cuda"]["reason"] == "not in --only"
    assert steps["bench_train"]["figures"] == bench_figures()  # the figures file, read back whole
    failed = steps["torchrun_ddp"]
    # The child's own error, not torchrun's banner.
    assert failed["rc"] == 1 and failed["error"] == "RuntimeError: Gloo connectFullMesh failed"
    work = summary["work_dir"]
    figures = steps["train_cuda"]["figures"]
    assert figures["results"] == {"synthetic_b": {"mAP": 0.25, "rank1": 0.5, "mINP": 0.125, "epoch": 2}}
    assert figures["mixed_precision"] == "fp16 (train.amp fp16, cuda)" and figures["elapsed"] == "0:00:07"
    assert figures["weights_on"] == ["cuda:0"] and figures["save_dir"] == f"{work}/runs/train_cuda"
    # The stand-ins received exactly the commands the summary names, in order.
    assert [" ".join(call) for call in calls(tmp_path)] == [
        steps[name]["command"].split(" ", 1)[1] for name in ("bench_train", "bench_eval_cuda", "train_cuda",
                                                             "torchrun_ddp")]
    # $OUT receives two files only: the combined log and the summary.
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["device_check.json", "device_check.log"]
    assert json.loads((out / "device_check.json").read_text()) == summary
    log = (out / "device_check.log").read_text()
    assert "===== torchrun_ddp: failed (rc 1" in log and "Gloo connectFullMesh failed" in log
    assert_inside(work, tmp_path / "tmp")


def test_a_two_process_run_passes_only_with_both_ranks_memories_agreeing(tmp_path, stand_ins):
    done, _, summary = run_script(tmp_path, "--only", "torchrun_ddp", **stand_ins)
    assert done.returncode == 0, done.stderr
    figures = summary["steps"]["torchrun_ddp"]["figures"]
    assert figures["world_size"] == 2 and figures["pcl_memories_identical"] == {"ranks": 2, "epochs": [1, 2]}


@pytest.mark.parametrize("fault,reason", [
    ({"FAKE_TRAIN_DEVICE": "cpu"}, "not a GPU result: the engine reported 'Mixed precision: fp16 (train.amp fp16, "
                                   "cpu)', not a CUDA run"),
    ({"FAKE_BENCH_DEVICE": "cpu"}, "not a GPU result: setting fp16:encode: the baseline step's weights were on ['cpu']"),
    ({"FAKE_EVAL_DEVICE": "cpu"}, "not a GPU result: market ranked on cpu, not on CUDA"),
], ids=["training", "bench-train", "bench-eval"])
def test_a_step_that_exits_0_after_running_on_the_cpu_fails(tmp_path, stand_ins, fault, reason):
    """Exit status 0 is not enough: a GPU step's own output must show CUDA."""
    if "FAKE_BENCH_DEVICE" in fault:
        (tmp_path / "bench.json").write_text(json.dumps(bench_figures("cpu")))
    evaluation = dict(CUDA_EVAL, market={**CUDA_EVAL["market"], "device": "cpu"}) if "FAKE_EVAL_DEVICE" in fault \
        else CUDA_EVAL
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    done, _, summary = run_script(tmp_path, "--only", "bench_train,bench_eval_cuda,train_cuda",
                                  FAKE_EVAL_JSON=str(tmp_path / "eval.json"), **fault, **stand_ins)
    assert done.returncode == 1
    failed = {name: step["reason"] for name, step in summary["steps"].items() if step["status"] == "failed"}
    assert list(failed.values()) == [reason], failed


def test_gpu_path_stops_a_step_at_its_timeout_and_keeps_to_the_time_budget(tmp_path, stand_ins):
    done, _, summary = run_script(tmp_path, "--only", "bench_eval_cuda,train_cuda", "--budget", "60",
                                  "--step-timeout", "12", **stand_ins)
    assert done.returncode == 1
    steps = summary["steps"]
    timed_out = steps["bench_eval_cuda"]
    assert timed_out["status"] == "timeout" and timed_out["rc"] == 124 and timed_out["effective_timeout_s"] == 12
    assert timed_out["reason"] == "no result within 12 s"
    assert steps["train_cuda"]["status"] == "ok"
    assert len(calls(tmp_path)) == 2
    # A budget that is spent before a step starts skips it.
    done, _, summary = run_script(tmp_path, "--only", "bench_eval_cuda,train_cuda", "--budget", "1", **stand_ins)
    assert {name: summary["steps"][name]["status"] for name in ("bench_eval_cuda", "train_cuda")} == {
        "bench_eval_cuda": "skipped", "train_cuda": "skipped"}
    assert summary["steps"]["train_cuda"]["reason"].startswith("time budget spent: ")


def test_a_terminated_run_stops_its_step_and_its_summary_file_already_holds_the_earlier_steps(tmp_path, stand_ins):
    import time

    script = subprocess.Popen(["bash", SCRIPT, "--only", "bench_eval_cuda,train_cuda"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=script_env(tmp_path, **stand_ins))
    deadline = time.monotonic() + 180
    while not calls(tmp_path) and time.monotonic() < deadline:  # bench eval (the stand-in sleeps) has started
        time.sleep(0.1)
    # Killed now, the run would still have reported the steps done so far.
    written = json.loads((tmp_path / "out" / "device_check.json").read_text())
    assert written["steps"]["dependencies"]["status"] == "ok"
    assert written["steps"]["bench_train"]["status"] == "skipped"
    assert written["steps"]["bench_eval_cuda"]["status"] == "running"
    script.terminate()
    stdout, _ = script.communicate(timeout=120)
    assert script.returncode == 143
    summary = json.loads(stdout.partition(DELIMITER + "\n")[2])
    assert summary["note"] == "interrupted by SIGTERM" and summary["exit_status"] == 143
    assert summary["steps"]["bench_eval_cuda"]["status"] == "interrupted"
    assert summary["steps"]["train_cuda"] == {**summary["steps"]["train_cuda"], "status": "skipped",
                                              "reason": "interrupted (SIGTERM) before this step"}
    assert len(calls(tmp_path)) == 1


def test_gpu_steps_do_not_run_when_a_dependency_is_missing(tmp_path, stand_ins):
    """The dependency check fails (here: a stand-in for it that says so): no GPU step runs."""
    python = stand_in_python(tmp_path, "echo 'device_check: missing: yacs' >&2; exit 4")
    done, _, summary = run_script(tmp_path, **{**stand_ins, "PYTHON": python})
    assert done.returncode == 1
    steps = summary["steps"]
    assert steps["dependencies"]["status"] == "failed"
    assert steps["dependencies"]["error"] == "device_check: missing: yacs"
    for name in GPU_STEPS:
        assert steps[name]["status"] == "skipped"
        assert steps[name]["reason"] == "dependencies: device_check: missing: yacs"
    assert calls(tmp_path) == []


def test_unknown_arguments_are_refused_before_anything_runs(tmp_path):
    for args, message in [(["--only", "bench_train_bf16"], "--only: unknown step 'bench_train_bf16'"),
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


TORCHRUN_FAILURE = """[rank0]: Traceback (most recent call last):
[rank0]:   File "dcac_plugin/run/launcher.py", line 1, in run
[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB
E1203 12:00:00 torch/distributed/elastic/multiprocessing/api.py:1 failed (exitcode: 1) local_rank: 0
Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: 
============================================================
dcac_plugin.cli FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-03_12:00:00
  host      : gpu
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 42)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


@pytest.mark.parametrize("stdout,stderr,line", [
    ("", TORCHRUN_FAILURE, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    ("", "loading ...\ndcac: error: Dataset 'market1501' not found under /data\n",
     "dcac: error: Dataset 'market1501' not found under /data"),
    ("step 3\n", "Traceback (most recent call last):\n  File x\nValueError: bad\n\n=====\n", "ValueError: bad"),
    ("last words\n------\n", "", "last words"),
    ("", "", None),
], ids=["torchrun-banner", "dcac-error", "traceback", "banner-only", "silent"])
def test_a_failed_steps_error_is_its_real_error_not_a_banner(stdout, stderr, line):
    assert device_check.error_excerpt(stdout, stderr) == line


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
    # Off the CPU, our ranking is also set against ours on the CPU (what the GPU run checks without torchreid).
    assert ("max_abs_diff_cmc_vs_cpu" in market) == (device != "cpu")
    if device != "cpu":
        assert market["max_abs_diff_cmc_vs_cpu"] == 0 and market["abs_diff_mAP_vs_cpu"] < 1e-12
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
