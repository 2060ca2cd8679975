"""The Python side of ``scripts/device_check.sh``: environment, command checks and the JSON summary.

The script runs every GPU measurement the project owes, each step with its own timeout, and
records each step in a folder of its own (``<work>/steps/NN_name/``): ``argv`` (the command,
NUL-separated, exactly as run), ``meta`` (``key=value`` lines: name, kind, timeout, status,
exit status, seconds, ...), ``stdout`` and ``stderr``. This module, run by path
(``python dcac_plugin/benchmarks/device_check.py ...``, so that neither an install nor ``import
dcac_plugin`` is needed for the environment and the summary), has three commands:

``env --out FILE``
    Writes the environment (Python, torch, CUDA, GPUs, nvidia-smi) as JSON and prints one
    line describing it; exit status 0 where torch sees a CUDA GPU, 3 where it does not.
``validate STEPS_DIR``
    Checks that every GPU step's command would be accepted, without running it: ``dcac``
    commands by dcac's parser (and, for ``train``, the merged and checked config, as ``dcac
    config`` builds it), ``torchrun`` by torchrun's own parser and then its ``-m dcac_plugin.cli``
    part as above, ``pytest`` by collecting the tests (``--collect-only``). Prints JSON; exit
    status 0 when every command is valid.
``verify STEP_DIR``
    Whether a GPU step that exited 0 really ran on CUDA as asked, read from its own output
    (weights on a CUDA device, CUDA-event timings and CUDA memory, the precision asked for,
    for torchrun the ranks' agreeing PCL memories); exit status 1 with the reason otherwise,
    so that no CPU figure passes as a GPU figure.
``summary --work DIR ...``
    Prints the summary: per step its status (ok, failed, timeout, skipped, dry-run), seconds,
    command and log, and the figures read from its output (the benchmarks' JSON, a training
    run's ``results.json``, pytest's counts, the dependency check's versions).
``deps --out FILE``
    Imports every dependency (each ``install_requires`` entry of ``setup.cfg`` and what our code
    imports besides) and then ``dcac_plugin``; prints one line per package (version, whether it
    meets our pin), writes them as JSON, and exits 1 with one line on stderr naming every missing
    or unusable one. Their own requirements, found unmet, are warnings.
``wheels FOLDER``
    Checks the wheels ``scripts/device_wheels.sh`` gathered for the GPU machine against the
    packages it already has (``scripts/device_machine_packages.txt``): each installable there,
    one version of each, none already there, and every requirement of ours and of theirs met.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # run by path: this folder must not shadow top-level modules; the checkout's root instead
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import configparser  # noqa: E402
import contextlib  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import warnings  # noqa: E402
import zipfile  # noqa: E402
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NO_GPU_EXIT = 3
# Lines of a step's output kept as its error when it failed.
ERROR_CHARS = 2000


# ----------------------------------------------------------------------------- environment


def environment() -> Dict[str, Any]:
    """Python, torch, CUDA and the GPUs as torch sees them, and nvidia-smi's view where it exists."""
    import platform

    env: Dict[str, Any] = {"python": sys.executable, "python_version": platform.python_version(),
                           "cpu_count": os.cpu_count()}
    try:
        import torch
    except Exception as err:  # noqa: BLE001  (any import failure is the answer here)
        env.update(cuda_available=False, reason=f"torch cannot be imported: {type(err).__name__}: {err}")
        return env
    env.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
    try:
        available = bool(torch.cuda.is_available())
    except Exception as err:  # noqa: BLE001
        available = False
        env["cuda_error"] = f"{type(err).__name__}: {err}"
    env["cuda_available"] = available
    if available:
        env["device_count"] = torch.cuda.device_count()
        env["devices"] = [torch.cuda.get_device_name(i) for i in range(env["device_count"])]
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        env["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
        env["total_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
        import torch.distributed as dist

        env["nccl_available"] = bool(dist.is_available() and dist.is_nccl_available())
    else:
        build = "a build without CUDA" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        env["reason"] = f"torch.cuda.is_available() is False; torch {torch.__version__}, {build}"
    env["nvidia_smi"] = _nvidia_smi()
    return env


def _nvidia_smi() -> Optional[str]:
    """``nvidia-smi -L`` and the driver version, or None where there is no nvidia-smi."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout or done.stderr).strip() or None


def environment_line(env: Dict[str, Any]) -> str:
    """One line saying what this machine has, for the script's first line of output."""
    if env.get("cuda_available"):
        return (f"CUDA GPU {', '.join(env['devices'])} (torch {env['torch']}, CUDA {env['torch_cuda']}, "
                f"bf16 {'yes' if env.get('bf16_supported') else 'no'})")
    return env.get("reason") or env.get("cuda_error") or "torch sees no CUDA GPU"


# ----------------------------------------------------------------------------- steps on disk


def read_meta(step_dir: str) -> Dict[str, str]:
    """A step's ``meta`` file: ``key=value`` lines, a later line overriding an earlier one."""
    meta: Dict[str, str] = {}
    path = os.path.join(step_dir, "meta")
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep:
                    meta[key] = value
    return meta


def read_argv(step_dir: str) -> List[str]:
    """A step's command as written by the script (NUL-separated words)."""
    with open(os.path.join(step_dir, "argv"), "rb") as handle:
        data = handle.read()
    return [word.decode("utf-8", "replace") for word in data.split(b"\0")[:-1]]


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def step_dirs(steps_root: str) -> List[str]:
    """The step folders in the order they were defined (``NN_name``)."""
    if not os.path.isdir(steps_root):
        return []
    return [os.path.join(steps_root, name) for name in sorted(os.listdir(steps_root))
            if os.path.isdir(os.path.join(steps_root, name))]


# ----------------------------------------------------------------------------- figures


def last_json_block(text: str) -> Optional[Any]:
    """The JSON document a command printed last: from the last line that is exactly ``{`` (an
    indented ``json.dumps``) to the end, or else the last line that parses alone."""
    lines = text.rstrip().splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].rstrip() == "{":
            try:
                return json.loads("\n".join(lines[index:]))
            except ValueError:
                continue
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def train_figures(save_dir: str, stdout: str) -> Dict[str, Any]:
    """A training run's results (``results.json``: mAP, Rank-1 per target), the precision its
    engine reported and torchreid's ``Elapsed`` line."""
    figures: Dict[str, Any] = {"save_dir": save_dir}
    summary = read_json(os.path.join(save_dir, "results.json")) if save_dir else None
    if isinstance(summary, dict):
        figures["world_size"] = summary.get("world_size")
        figures["results"] = {target: {key: values.get(key) for key in ("mAP", "rank1", "mINP", "epoch")}
                              for target, values in (summary.get("results") or {}).items()}
    else:
        figures["results"] = None
    precision = re.findall(r"^\s*Mixed precision: (.*)$", stdout, flags=re.MULTILINE)
    if precision:
        figures["mixed_precision"] = precision[-1].strip()
    elapsed = re.findall(r"^Elapsed (\S+)", stdout, flags=re.MULTILINE)
    if elapsed:
        figures["elapsed"] = elapsed[-1]
    weights = re.findall(r"^\s*Weights on: (\S+)", stdout, flags=re.MULTILINE)
    if weights:
        figures["weights_on"] = sorted(set(weights))
    agreed = re.findall(r"^PCL memory identical on all (\d+) ranks after epoch (\d+)", stdout, flags=re.MULTILINE)
    if agreed:
        figures["pcl_memories_identical"] = {"ranks": int(agreed[-1][0]), "epochs": [int(e) for _, e in agreed]}
    return figures


def pytest_figures(stdout: str) -> Dict[str, Any]:
    """pytest's counts (its last summary line) and the outcome of each test it names (``-rA``)."""
    counts: Dict[str, int] = {}
    summary_lines = [line for line in stdout.splitlines()
                     if re.search(r"\b\d+ (passed|failed|skipped|deselected|errors?|xfailed|xpassed)\b", line)
                     or "no tests ran" in line]
    if summary_lines:
        for number, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)",
                                       summary_lines[-1]):
            counts["errors" if word == "error" else word] = int(number)
    tests = {match.group(2): match.group(1).lower() for match in
             re.finditer(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\s+(\S+)", stdout, flags=re.MULTILINE)}
    return {"counts": counts, "tests": tests}


# Lines that end a failed step's output without saying what failed: banners, torchrun's
# failure report, pytest's separators.
_NOT_THE_ERROR = re.compile(r"^([=\-_*#~ ]+|.*ChildFailedError.*|Failures:|<NO_OTHER_FAILURES>|Root Cause.*|\[\d+\]:|"
                            r"(time|host|rank|exitcode|error_file|traceback)\s*:.*|.*dcac_plugin\.cli FAILED.*|"
                            r"To enable traceback see:.*)$")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt)|AssertionError|KeyboardInterrupt)(:|$)")
_RANK_PREFIX = re.compile(r"^\[(default)?rank\d+\]:\s*")


def error_excerpt(stdout: str, stderr: str) -> Optional[str]:
    """The line that says why a step failed: the last ``dcac: error:`` line, else the last
    exception line of a traceback (a torchrun child's ``[rankN]:`` prefix removed; not
    torchrun's own ``ChildFailedError``), else the last line that is not a banner or part of
    torchrun's failure report; stderr first, then stdout."""
    for text in (stderr, stdout):
        lines = [_RANK_PREFIX.sub("", line.strip()) for line in text.splitlines() if line.strip()]
        for wanted in (lambda line: line.startswith("dcac: error:"),
                       lambda line: bool(_EXCEPTION_LINE.match(line)) and "ChildFailedError" not in line):
            found = [line for line in lines if wanted(line)]
            if found:
                return found[-1][:ERROR_CHARS]
        meaningful = [line for line in lines if not _NOT_THE_ERROR.match(line)]
        if meaningful:
            return meaningful[-1][:ERROR_CHARS]
    return None


def step_summary(step_dir: str, validation: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One step's entry in the summary."""
    meta = read_meta(step_dir)
    try:
        argv = read_argv(step_dir)
    except OSError:
        argv = []
    stdout, stderr = read_text(os.path.join(step_dir, "stdout")), read_text(os.path.join(step_dir, "stderr"))
    status = meta.get("status", "not run")
    entry: Dict[str, Any] = {"status": status, "gpu": meta.get("gpu") == "1"}
    for key in ("seconds", "timeout_s", "effective_timeout_s"):
        if meta.get(key):
            entry[key] = _number(meta[key])
    if meta.get("rc"):
        entry["rc"] = _number(meta["rc"])
    for key in ("reason", "note"):
        if meta.get(key):
            entry[key] = meta[key]
    entry["command"] = shlex.join(argv)
    if status in ("ok", "failed", "timeout", "interrupted"):
        entry["log"] = {"stdout": os.path.join(step_dir, "stdout"), "stderr": os.path.join(step_dir, "stderr")}
        if status != "ok":
            entry["error"] = error_excerpt(stdout, stderr)
        entry["figures"] = _figures(meta.get("kind", ""), meta, stdout, stderr, step_dir)
    if validation is not None and meta.get("name") in validation:
        entry["validation"] = validation[meta["name"]]
    return entry


def _figures(kind: str, meta: Dict[str, str], stdout: str, stderr: str, step_dir: str = "") -> Any:
    if kind == "bench":  # the figures file the benchmark rewrote as it went, else its JSON as printed
        written = read_json(os.path.join(step_dir, "figures.json")) if step_dir else None
        return written if written is not None else last_json_block(stdout)
    if kind == "deps":
        return read_json(os.path.join(step_dir, "dependencies.json")) if step_dir else None
    if kind == "train":
        return train_figures(meta.get("save_dir", ""), stdout)
    if kind == "pytest":
        return pytest_figures(stdout)
    if kind == "usage_error":
        lines = stderr.strip().splitlines()
        return {"error_line": lines[0] if lines else None}
    if kind == "validate":  # each command's result is under its own step ("validation")
        data = last_json_block(stdout)
        if not isinstance(data, dict):
            return None
        commands = data.get("commands") or {}
        return {"all_valid": data.get("all_valid"), "checked": len(commands),
                "invalid": sorted(name for name, result in commands.items() if not result.get("valid"))}
    return None


def read_json(path: str) -> Any:
    """A JSON file's document, or None where it is missing or not (yet) valid JSON."""
    text = read_text(path)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _number(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else round(value, 2)


def summary(work: str, mode: str, budget_s: float, elapsed_s: float, log_dir: str, env_path: str,
            exit_status: int, note: str = "") -> Dict[str, Any]:
    """The whole summary of a run of the script."""
    env: Dict[str, Any] = read_json(env_path) or {}
    dirs = step_dirs(os.path.join(work, "steps"))
    validation = None
    for step_dir in dirs:
        meta = read_meta(step_dir)
        if meta.get("kind") == "validate" and meta.get("status") in ("ok", "failed"):
            data = last_json_block(read_text(os.path.join(step_dir, "stdout")))
            validation = data.get("commands") if isinstance(data, dict) else None
    steps = {read_meta(d).get("name", os.path.basename(d)): step_summary(d, validation) for d in dirs}
    counts: Dict[str, int] = {}
    for entry in steps.values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    result: Dict[str, Any] = {
        "device_check": "scripts/device_check.sh", "mode": mode, "gpu_available": bool(env.get("cuda_available")),
    }
    if not env.get("cuda_available"):
        result["reason"] = env.get("reason") or env.get("cuda_error") or "torch sees no CUDA GPU"
    if note:
        result["note"] = note
    result.update({"exit_status": exit_status, "budget_s": budget_s, "elapsed_s": round(elapsed_s, 1),
                   "counts": counts, "steps": steps, "environment": env, "log_dir": log_dir, "work_dir": work})
    return result


# ----------------------------------------------------------------------------- no CPU figure as a GPU figure

# Our ranking on CUDA against ours on the CPU, on the same float64 distance matrix.
RANKING_TOLERANCE = 1e-6


def verify_step(step_dir: str) -> Optional[str]:
    """``None`` where a GPU step's own output shows that it ran on CUDA as asked (weights on a
    CUDA device, CUDA timings and memory, the precision asked for); else the reason it does not."""
    meta = read_meta(step_dir)
    kind = meta.get("kind", "")
    stdout, stderr = read_text(os.path.join(step_dir, "stdout")), read_text(os.path.join(step_dir, "stderr"))
    figures = _figures(kind, meta, stdout, stderr, step_dir)
    argv = read_argv(step_dir)
    if kind == "bench" and "train" in argv:
        return _verify_train_bench(figures, _words_after(argv, "--settings"))
    if kind == "bench":
        return _verify_eval_bench(figures)
    if kind == "train":
        processes = _words_after(argv, "--nproc_per_node")[:1]
        return _verify_training(figures, meta, int(processes[0]) if processes else 1,
                                int((_words_after(argv, "train.max_epoch") or ["0"])[0]))
    if kind == "pytest":
        return _verify_pytest(figures)
    return f"no GPU check for a step of kind {kind!r}"


def _words_after(argv: Sequence[str], flag: str) -> List[str]:
    """The words after ``flag`` up to the next option or config key (``--x``, ``a.b``)."""
    if flag not in argv:
        return []
    words = []
    for word in argv[argv.index(flag) + 1:]:
        if word.startswith("-") or ("." in word and not word[0].isdigit()):
            break
        words.append(word)
    return words


def _on_cuda(places: Any) -> bool:
    return isinstance(places, list) and bool(places) and all(str(place).startswith("cuda") for place in places)


def _verify_train_bench(figures: Any, settings: Sequence[str]) -> Optional[str]:
    if not isinstance(figures, dict) or not isinstance(figures.get("settings"), dict):
        return "the benchmark wrote no figures"
    for name in settings:
        entry = figures["settings"].get(name)
        if entry is None:
            return f"setting {name}: not measured"
        if "error" in entry:
            return f"setting {name}: {entry['error']}"
        for engine, result in (entry.get("engines") or {}).items():
            if not _on_cuda(result.get("parameter_devices")):
                return f"setting {name}: the {engine} step's weights were on {result.get('parameter_devices')}"
            if result.get("peak_memory_kind") != "cuda max allocated" or result.get("median_cuda_step_s") is None:
                return f"setting {name}: the {engine} step has no CUDA memory or CUDA-event figures"
            if result.get("amp") != entry.get("amp"):
                return f"setting {name}: the {engine} step ran in {result.get('amp')}, not {entry.get('amp')}"
    return None


def _verify_eval_bench(figures: Any) -> Optional[str]:
    if not isinstance(figures, dict):
        return "the benchmark printed no figures"
    parts = {"the run": figures.get("device"), **{part: (figures.get(part) or {}).get("device")
                                                  for part in ("market", "msmt") if part in figures}}
    for part, place in parts.items():
        if not str(place).startswith("cuda"):
            return f"{part} ranked on {place}, not on CUDA"
    market = figures.get("market") or {}
    for key in ("max_abs_diff_cmc_vs_cpu", "abs_diff_mAP_vs_cpu"):
        if key in market and not market[key] <= RANKING_TOLERANCE:
            return f"our ranking on CUDA differs from ours on the CPU: {key} {market[key]}"
    if "msmt" in figures and "peak_cuda_memory_gb" not in figures["msmt"]:
        return "the MSMT17-size part reports no CUDA memory"
    return None


def _verify_training(figures: Dict[str, Any], meta: Dict[str, str], processes: int, epochs: int) -> Optional[str]:
    precision = figures.get("mixed_precision") or ""
    if not precision.endswith(", cuda)"):
        return f"the engine reported 'Mixed precision: {precision or '(no line)'}', not a CUDA run"
    if not _on_cuda(figures.get("weights_on")):
        return f"the weights were on {figures.get('weights_on') or '(no line)'}"
    if not figures.get("results"):
        return f"no results.json in {meta.get('save_dir')}"
    if processes > 1:
        if figures.get("world_size") != processes:
            return f"{processes} processes asked for, results.json says world size {figures.get('world_size')}"
        agreed = figures.get("pcl_memories_identical") or {}
        if agreed.get("ranks") != processes or epochs not in agreed.get("epochs", []):
            return f"no 'PCL memory identical on all {processes} ranks after epoch {epochs}' line"
    return None


def _verify_pytest(figures: Dict[str, Any]) -> Optional[str]:
    counts, tests = figures.get("counts") or {}, figures.get("tests") or {}
    if counts.get("failed") or counts.get("errors"):
        return f"pytest: {counts}"
    if not counts.get("passed"):
        return "pytest: no test passed"
    elsewhere = [name for name in tests if "cuda" not in name.lower()]
    if elsewhere:
        return f"pytest ran tests without a CUDA variant: {', '.join(elsewhere[:3])}"
    return None


# ----------------------------------------------------------------------------- validation


def validate_command(argv: Sequence[str]) -> Dict[str, Any]:
    """Whether ``argv`` would be accepted, checked without running it; ``{"valid", "checks" | "error"}``."""
    argv = list(argv)
    module = argv[2] if len(argv) >= 3 and argv[1] == "-m" else None
    program = os.path.basename(argv[0]) if argv else ""
    try:
        if program == "dcac" or module == "dcac_plugin.cli":
            return _validate_dcac(argv[1:] if program == "dcac" else argv[3:])
        if program == "torchrun" or module == "torch.distributed.run":
            return _validate_torchrun(argv[1:] if program == "torchrun" else argv[3:])
        if module == "pytest":
            return _validate_pytest(argv)
    except Exception as err:  # noqa: BLE001  (a check that breaks is a finding, not a crash of the summary)
        return {"valid": False, "error": f"{type(err).__name__}: {err}"}
    return {"valid": False, "error": f"no check for this kind of command: {shlex.join(argv)}"}


def _validate_dcac(args: List[str], checks: Sequence[str] = ()) -> Dict[str, Any]:
    """dcac's parser; for commands that read a config, the config built and checked too."""
    from dcac_cli.parser import build_parser

    checks = list(checks)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            ns = build_parser().parse_args(args)
    except SystemExit as done:
        if done.code == 0:  # --help
            return {"valid": True, "checks": checks + ["dcac's parser (help)"]}
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        return {"valid": False, "error": next((line for line in lines if line.startswith("dcac: error:")),
                                              lines[0] if lines else f"exit status {done.code}")}
    checks.append(f"dcac's parser ({ns.command})")
    if ns.command in ("train", "config", "stats"):
        from dcac_config.errors import UserError
        from dcac_config.loading import config_from_args
        from dcac_plugin.run.launcher import check_config

        try:
            with contextlib.redirect_stdout(io.StringIO()):
                cfg = config_from_args(ns)
                check_config(cfg)
        except UserError as err:
            return {"valid": False, "error": f"dcac: error: {err}"}
        if cfg.train.dist_backend not in ("", "nccl", "gloo"):
            return {"valid": False, "error": f"train.dist_backend {cfg.train.dist_backend!r}: use nccl or gloo"}
        checks.append("config merged and checked (as dcac config / dcac train build it)")
    device = getattr(ns, "device", None)
    if ns.command == "bench" and device is not None:
        import torch

        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError):
            return {"valid": False, "error": f"--device {device!r} is no torch device"}
        if kind not in ("cpu", "cuda"):
            return {"valid": False, "error": f"--device {device!r}: use cpu or cuda"}
        checks.append(f"--device {device} is a torch device")
    return {"valid": True, "checks": checks}


def _validate_torchrun(args: List[str]) -> Dict[str, Any]:
    """torchrun's own parser, then the module it starts (``-m dcac_plugin.cli``) as a dcac command."""
    from torch.distributed.run import get_args_parser

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            ns = get_args_parser().parse_args(args)
    except SystemExit:
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        return {"valid": False, "error": lines[-1] if lines else "torchrun's parser refused the arguments"}
    if not ns.module or ns.training_script != "dcac_plugin.cli":
        return {"valid": False, "error": "torchrun must start the module dcac_plugin.cli (-m dcac_plugin.cli)"}
    return _validate_dcac(list(ns.training_script_args),
                          [f"torchrun's parser (nproc_per_node {ns.nproc_per_node}, standalone {ns.standalone})"])


def _validate_pytest(argv: List[str]) -> Dict[str, Any]:
    """pytest's own parsing and collection of the command's arguments (``--collect-only``, in this
    process, where ``dcac_plugin`` is already imported): test paths, options and ``-k`` checked."""
    import pytest

    class Collected:
        def __init__(self) -> None:
            self.selected: List[str] = []
            self.deselected = 0

        def pytest_deselected(self, items) -> None:
            self.deselected += len(items)

        def pytest_collection_finish(self, session) -> None:
            self.selected = [item.nodeid for item in session.items]

    collected = Collected()
    captured = io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(REPO_ROOT)
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            code = int(pytest.main(list(argv[3:]) + ["--collect-only", "-q"], plugins=[collected]))
    finally:
        os.chdir(cwd)
    # 5: no test selected, as here without CUDA, where the CUDA variants are not generated.
    if code not in (0, 5):
        lines = [line.strip() for line in captured.getvalue().splitlines() if line.strip()]
        return {"valid": False, "error": (lines[-1] if lines else "") + f" (pytest exit status {code})"}
    check = (f"pytest parsed the options and collected the test files: {len(collected.selected)} selected, "
             f"{collected.deselected} deselected by -k here")
    return {"valid": True, "checks": [check], "selected_here": collected.selected}


def validate_steps(steps_root: str) -> Dict[str, Any]:
    """Every GPU step's command checked; ``{"all_valid", "commands": {name: result}}``."""
    results = {}
    for step_dir in step_dirs(steps_root):
        meta = read_meta(step_dir)
        if meta.get("gpu") != "1":
            continue
        argv = read_argv(step_dir)
        result = validate_command(argv)
        result["command"] = shlex.join(argv)
        results[meta.get("name", os.path.basename(step_dir))] = result
    return {"all_valid": bool(results) and all(r["valid"] for r in results.values()), "commands": results}


# ----------------------------------------------------------------------------- dependencies

SETUP_CFG = os.path.join(REPO_ROOT, "setup.cfg")
MACHINE_PACKAGES = os.path.join(REPO_ROOT, "scripts", "device_machine_packages.txt")
# What our code imports at run time that install_requires names only through another package
# (yaml: PyYAML comes with yacs).
RUNTIME_REQUIRES = ("PyYAML",)
# Import names that are not the distribution's name with '_' for '-' (keys: canonical names).
IMPORT_NAMES = {"open-clip-torch": "open_clip", "opencv-python-headless": "cv2", "pillow": "PIL", "pyyaml": "yaml"}
OURS = "dcac-reid"
WHEELS_HINT = 'run scripts/device_wheels.sh where pip reaches PyPI and carry .whl (device tool: carry [".whl"])'


class Found(NamedTuple):
    """A package as a requirement walk finds it."""
    version: Optional[str]  # None: there, but its version is not recorded
    requires: Optional[List[str]]  # its Requires-Dist lines; None: not followed


def setup_option(key: str, setup_cfg: str = SETUP_CFG) -> str:
    """One value of setup.cfg's ``[options]``."""
    parser = configparser.ConfigParser()
    if not parser.read(setup_cfg, encoding="utf-8"):
        raise OSError(f"cannot read {setup_cfg}")
    return parser["options"][key]


def install_requires(setup_cfg: str = SETUP_CFG) -> List[str]:
    """setup.cfg's ``install_requires`` lines."""
    return [line.strip() for line in setup_option("install_requires", setup_cfg).splitlines() if line.strip()]


def import_name(distribution: str) -> str:
    """The module a distribution is imported as."""
    from packaging.utils import canonicalize_name

    name = canonicalize_name(distribution)
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def read_machine_packages(path: str = MACHINE_PACKAGES) -> Dict[str, Optional[str]]:
    """The GPU machine's packages: canonical name -> version (None where none was recorded).
    The entry ``python`` is its interpreter."""
    from packaging.utils import canonicalize_name

    packages: Dict[str, Optional[str]] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if line:
                name, _, version = line.partition("==")
                packages[canonicalize_name(name.strip())] = version.strip() or None
    return packages


def machine_marker_environment(python_version: str) -> Dict[str, str]:
    """PEP 508 marker values for CPython ``python_version`` on x86-64 Linux, as on the GPU machine."""
    from packaging.markers import default_environment

    return dict(default_environment(), implementation_name="cpython", implementation_version=python_version,
                os_name="posix", platform_machine="x86_64", platform_system="Linux",
                platform_python_implementation="CPython", python_full_version=python_version,
                python_version=".".join(python_version.split(".")[:2]), sys_platform="linux")


def _applies(requirement, extras: Sequence[str], marker_env: Dict[str, str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate(dict(marker_env, extra=extra)) for extra in ("", *extras))


class Walk(NamedTuple):
    """What a requirement walk found."""
    unmet: List[Dict[str, Any]]  # package, requirement, needed_by, found (the version there; None: absent)
    unchecked: List[str]  # "requirement (needed by)" where the version there is not recorded
    notes: List[str]  # what could not be read or followed


def unmet_requirements(roots: Sequence[str], lookup: Callable[[str], Optional[Found]], marker_env: Dict[str, str],
                       root_label: str = OURS) -> Walk:
    """Follows ``roots`` and, for each package ``lookup`` finds, its own requirements (with the
    extras asked of it)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    unmet: List[Dict[str, Any]] = []
    unchecked: List[str] = []
    notes: List[str] = []
    followed, seen = set(), set()
    queue = [(line, root_label, ()) for line in roots]
    while queue:
        line, needed_by, parent_extras = queue.pop(0)
        try:
            requirement = Requirement(line)
        except InvalidRequirement as err:
            notes.append(f"{needed_by}: unreadable requirement {line!r} ({err})")
            continue
        if not _applies(requirement, parent_extras, marker_env) or (line, needed_by) in seen:
            continue
        seen.add((line, needed_by))
        name = canonicalize_name(requirement.name)
        found = lookup(name)
        if found is None or (found.version is not None
                             and not requirement.specifier.contains(found.version, prereleases=True)):
            unmet.append({"package": name, "requirement": _shown(requirement), "needed_by": needed_by,
                          "found": None if found is None else found.version})
            continue
        if found.version is None and requirement.specifier:
            unchecked.append(f"{_shown(requirement)} ({needed_by})")
        extras = tuple(sorted(requirement.extras))
        if found.requires is None:
            if extras:
                notes.append(f"{name}[{','.join(extras)}]: what these extras need is not known here")
        elif (name, extras) not in followed:
            followed.add((name, extras))
            label = f"{name} {found.version}" if found.version else name
            queue.extend((sub, label, extras) for sub in found.requires)
    return Walk(unmet, unchecked, notes)


def _shown(requirement) -> str:
    """A requirement without its marker: the marker applied, or it would not be here."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"{requirement.name}{extras}{requirement.specifier}"


def describe_unmet(item: Dict[str, Any]) -> str:
    """One unmet requirement, in words."""
    if item["found"] is None:
        return f"{item['package']} missing ({item['needed_by']} needs {item['requirement']})"
    return f"{item['package']} {item['found']} does not satisfy {item['requirement']} (needed by {item['needed_by']})"


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:ERROR_CHARS]


def import_error(module: str) -> Optional[BaseException]:
    """What importing ``module`` raised, or None. Anything it raises (SystemExit too) is caught:
    one broken package is a finding to report, not the end of the check."""
    try:
        # Import-time chatter (torchreid's Cython notice) is neither output nor a finding here.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001
        return err
    return None


def installed_version(distribution: str, module: str) -> Optional[str]:
    """The installed distribution's version, else the module's ``__version__``, else None."""
    import importlib.metadata as metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        version = getattr(sys.modules.get(module), "__version__", None)
        return None if version is None else str(version)


def check_dependency(line: str) -> Dict[str, Any]:
    """One requirement of ours: imported, its version read and checked against our pin.
    ``status``: ok, missing, broken (its import raised) or wrong version."""
    from packaging.requirements import Requirement

    requirement = Requirement(line)
    module = import_name(requirement.name)
    entry: Dict[str, Any] = {"package": requirement.name, "requirement": line, "import": module}
    error = import_error(module)
    entry["version"] = installed_version(requirement.name, module)
    if error is not None:
        missing = isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] == module.split(".")[0]
        entry.update(status="missing" if missing else "broken", error=_one_line(error))
    elif entry["version"] is None:
        entry.update(status="ok", note="no version found: pin not checked")
    elif not requirement.specifier.contains(entry["version"], prereleases=True):
        entry.update(status="wrong version", error=f"{entry['version']} is outside {requirement.specifier}")
    else:
        entry["status"] = "ok"
    return entry


def check_python(setup_cfg: str = SETUP_CFG) -> Dict[str, Any]:
    """This interpreter against setup.cfg's ``python_requires``."""
    import platform

    from packaging.specifiers import SpecifierSet

    wanted, version = setup_option("python_requires", setup_cfg).strip(), platform.python_version()
    entry: Dict[str, Any] = {"package": "python", "requirement": f"python{wanted}", "import": None,
                             "version": version, "status": "ok"}
    if not SpecifierSet(wanted).contains(version, prereleases=True):
        entry.update(status="wrong version", error=f"{version} is outside {wanted}")
    return entry


def _installed(name: str) -> Optional[Found]:
    import importlib.metadata as metadata

    try:
        distribution = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    return Found(distribution.version, list(distribution.requires or []))


def dependency_report(setup_cfg: str = SETUP_CFG) -> Dict[str, Any]:
    """Every dependency checked (python, install_requires, RUNTIME_REQUIRES), then ``dcac_plugin``
    imported where they all passed; their own unmet requirements as warnings."""
    from packaging.markers import default_environment

    roots = install_requires(setup_cfg) + list(RUNTIME_REQUIRES)
    entries = [check_python(setup_cfg)] + [check_dependency(line) for line in roots]
    problems = [entry for entry in entries if entry["status"] != "ok"]
    ours: Dict[str, Any] = {"package": "dcac_plugin", "requirement": None, "import": "dcac_plugin"}
    if problems:  # it imports them all: its own failure would only repeat theirs
        ours.update(version=None, status="not tried", note="a dependency is missing or unusable")
    else:
        error = import_error("dcac_plugin")
        ours["version"] = getattr(sys.modules.get("dcac_plugin"), "__version__", None)
        ours["status"] = "ok" if error is None else "broken"
        if error is not None:
            ours["error"] = _one_line(error)
            problems.append(ours)
    entries.append(ours)
    # Our own pins are checked above; what the walk adds is what our dependencies need.
    walk = unmet_requirements(roots, _installed, default_environment())
    warnings_found = [describe_unmet(item) for item in walk.unmet if item["needed_by"] != OURS]
    return {"ok": not problems, "python": sys.executable, "pythonpath": os.environ.get("PYTHONPATH", ""),
            "packages": entries, "problems": [_describe_problem(entry) for entry in problems],
            "warnings": warnings_found, "notes": walk.notes}


def _describe_problem(entry: Dict[str, Any]) -> str:
    if entry["status"] == "missing":
        return f"{entry['package']} (missing)"
    return f"{entry['package']} ({entry['status']}: {entry.get('error')})"


def dependency_line(entry: Dict[str, Any]) -> str:
    """One package of the report, for the terminal."""
    pin = entry["requirement"] or "-"
    detail = entry.get("error") or entry.get("note") or ""
    return f"{entry['status']:<13} {entry['package']:<24} {entry['version'] or '-':<16} {pin}" + (
        f"  {detail}" if detail else "")


def failure_line(report: Dict[str, Any]) -> str:
    """The one line naming every missing or unusable package."""
    return f"device_check deps: missing or unusable: {'; '.join(report['problems'])}; {WHEELS_HINT}"


# ----------------------------------------------------------------------------- carried wheels

MANYLINUX = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]


def installable_tags(python_version: str) -> set:
    """The wheel tags CPython ``python_version`` on x86-64 Linux installs."""
    from packaging import tags

    major, minor = (int(part) for part in python_version.split(".")[:2])
    interpreter = f"cp{major}{minor}"
    return (set(tags.cpython_tags((major, minor), abis=[interpreter], platforms=MANYLINUX))
            | set(tags.compatible_tags((major, minor), interpreter=interpreter, platforms=MANYLINUX)))


def wheel_metadata(path: str) -> Dict[str, Any]:
    """A wheel's name, version, Requires-Dist and Requires-Python, from its METADATA."""
    import email

    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist()
                 if name.count("/") == 1 and name.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise ValueError(f"{len(names)} .dist-info/METADATA files")
        message = email.message_from_bytes(archive.read(names[0]))
    return {"name": message["Name"], "version": message["Version"],
            "requires": message.get_all("Requires-Dist") or [], "requires_python": message["Requires-Python"]}


def _machine_package(name: str, version: Optional[str]) -> Found:
    """What a requirement walk knows of a package on the machine: the version recorded, and of its
    requirements only those of extras (pip there installed the rest; which packages an extra pulls
    in is read from this machine's copy, where there is one)."""
    import importlib.metadata as metadata

    try:
        requires = [line for line in metadata.requires(name) or [] if "extra" in line.partition(";")[2]]
    except metadata.PackageNotFoundError:
        requires = None
    return Found(version, requires)


def _carried_wheels(folder: str, machine: Dict[str, Optional[str]],
                    python: str) -> Tuple[Dict[str, Dict[str, Any]], List[str]]:
    """The wheels in ``folder`` (canonical name -> METADATA's fields) and what is wrong with any one
    of them for the machine: not installable by its Python, two of one name, already there."""
    from packaging.specifiers import SpecifierSet
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    accepted = installable_tags(python)
    problems: List[str] = []
    carried: Dict[str, Dict[str, Any]] = {}
    files = sorted(name for name in os.listdir(folder) if name.endswith(".whl"))
    if not files:
        problems.append(f"no wheels in {folder}")
    for file in files:
        try:
            name, version, _, file_tags = parse_wheel_filename(file)
            meta = wheel_metadata(os.path.join(folder, file))
        except (InvalidWheelFilename, ValueError, OSError, zipfile.BadZipFile, KeyError) as err:
            problems.append(f"{file}: unreadable wheel ({err})")
            continue
        if not accepted & set(file_tags):
            problems.append(f"{file}: not installable by CPython {python} on x86-64 Linux")
        if meta["requires_python"] and not SpecifierSet(meta["requires_python"]).contains(python, prereleases=True):
            problems.append(f"{file}: needs Python {meta['requires_python']}, the machine has {python}")
        if name in carried:
            problems.append(f"two versions of {name}: {carried[name]['version']} and {version} (keep one)")
        if name in machine:
            problems.append(f"{file}: {name} is already on the machine (carry only what it lacks)")
        carried[name] = dict(meta, version=str(version))
    return carried, problems


def wheel_problems(folder: str, machine: Dict[str, Optional[str]],
                   setup_cfg: str = SETUP_CFG) -> Tuple[List[str], List[str]]:
    """Whether the wheels in ``folder`` and the machine's packages make our whole closure there:
    (problems, notes)."""
    python = machine.get("python") or "3.12"
    carried, problems = _carried_wheels(folder, machine, python)
    reached = set()

    def lookup(name: str) -> Optional[Found]:  # a carried wheel comes first on PYTHONPATH there
        reached.add(name)
        if name in carried:
            return Found(carried[name]["version"], carried[name]["requires"])
        if name in machine:
            return _machine_package(name, machine[name])
        return None

    roots = install_requires(setup_cfg) + list(RUNTIME_REQUIRES)
    walk = unmet_requirements(roots, lookup, machine_marker_environment(python))
    problems += [describe_unmet(item) for item in walk.unmet]
    notes = list(walk.notes)
    if walk.unchecked:
        notes.append("not checked here, the machine's version not being recorded (deps checks them there): "
                     + ", ".join(walk.unchecked))
    notes += [f"{name} {carried[name]['version']} is carried but nothing needs it" for name in sorted(carried)
              if name not in reached]
    return problems, notes


# ----------------------------------------------------------------------------- entry point


def run_deps(out: str) -> int:
    """``deps``: a line per package on stdout, the JSON to ``out``, one failure line on stderr."""
    report = dependency_report()
    for entry in report["packages"]:
        print(dependency_line(entry))
    for line in report["warnings"]:
        print(f"warning: {line}")
    if out:
        with open(out, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    if not report["ok"]:
        print(failure_line(report), file=sys.stderr)
        return 1
    return 0


def run_wheels(folder: str, machine_file: str) -> int:
    """``wheels``: the notes on stdout, then one line: the verdict (problems also on stderr)."""
    machine = read_machine_packages(machine_file)
    problems, notes = wheel_problems(folder, machine)
    for note in notes:
        print(f"note: {note}")
    if problems:
        line = f"device_check wheels: {len(problems)} problem(s): {'; '.join(problems)}"
        print(line, file=sys.stderr)
        return 1
    count = len([name for name in os.listdir(folder) if name.endswith(".whl")])
    print(f"device_check wheels: {count} wheels; with the machine's packages every requirement of ours and of "
          f"theirs is met (Python {machine.get('python')}, versions checked where recorded)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="device_check.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("env")
    env.add_argument("--out", required=True)
    validate = sub.add_parser("validate")
    validate.add_argument("steps_dir")
    verify = sub.add_parser("verify")
    verify.add_argument("step_dir")
    summ = sub.add_parser("summary")
    summ.add_argument("--work", required=True)
    summ.add_argument("--mode", required=True)
    summ.add_argument("--budget", type=float, required=True)
    summ.add_argument("--elapsed", type=float, required=True)
    summ.add_argument("--log-dir", required=True)
    summ.add_argument("--env", required=True)
    summ.add_argument("--exit-status", type=int, required=True)
    summ.add_argument("--note", default="")
    summ.add_argument("--json-out", default="")
    deps = sub.add_parser("deps")
    deps.add_argument("--out", default="")
    wheels = sub.add_parser("wheels")
    wheels.add_argument("folder")
    wheels.add_argument("--machine", default=MACHINE_PACKAGES)
    args = parser.parse_args(argv)
    if args.command == "deps":
        return run_deps(args.out)
    if args.command == "wheels":
        return run_wheels(args.folder, args.machine)
    if args.command == "env":
        found = environment()
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(found, handle, indent=2)
        print(environment_line(found))
        return 0 if found.get("cuda_available") else NO_GPU_EXIT
    if args.command == "validate":
        result = validate_steps(args.steps_dir)
        for name, check in result["commands"].items():
            verdict = "ok" if check["valid"] else f"INVALID: {check['error']}"
            print(f"[device_check] {name}: {verdict}", file=sys.stderr)
        print(json.dumps(result, indent=2))
        return 0 if result["all_valid"] else 1
    if args.command == "verify":
        reason = verify_step(args.step_dir)
        if reason:
            print(reason, file=sys.stderr)
        return 1 if reason else 0
    result = summary(args.work, args.mode, args.budget, args.elapsed, args.log_dir, args.env, args.exit_status,
                     args.note)
    text = json.dumps(result, indent=2)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
