"""``train.deterministic``: the settings under which a CUDA run repeats bit for bit.

On the CPU our runs repeat bit for bit without them (tests/test_resume.py). On a GPU, cuDNN may
pick non-deterministic convolution algorithms, and atomic adds (``index_add_`` in the class means
that initialise the PCL memory, the backward of attention) sum in whatever order the threads
finish: a resumed run stays close to an uninterrupted one, not identical. PyTorch's
deterministic mode swaps these for deterministic kernels, and stops at an op that has none.

Strict mode (``warn_only=False``) on purpose: with ``warn_only=True`` PyTorch keeps some
non-deterministic kernels and only warns once (the memory-efficient attention backward of
``scaled_dot_product_attention``, which CLIP's ViT and the U-Net may run on, stays so),
so the option would promise what it does not give. An op without a deterministic kernel stops
the run at its first use (the first training step) with a message naming it and the way out
(:func:`determinism_errors_explained`).
"""
from __future__ import annotations

import contextlib
import os
import re
from typing import Iterator, List, NamedTuple, Optional

import torch

from dcac_config.errors import ConfigError

CUBLAS_WORKSPACE_CONFIG = "CUBLAS_WORKSPACE_CONFIG"
# The workspace settings under which cuBLAS is deterministic (NVIDIA's cuBLAS documentation,
# "Results reproducibility"); PyTorch's deterministic mode refuses cuBLAS calls under any other.
DETERMINISTIC_CUBLAS_WORKSPACES = (":4096:8", ":16:8")


class DeterminismSettings(NamedTuple):
    """The process-wide settings ``train.deterministic`` changes."""

    algorithms: bool
    warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    cublas_workspace: Optional[str]  # the environment variable; None = unset


def current_settings() -> DeterminismSettings:
    return DeterminismSettings(torch.are_deterministic_algorithms_enabled(),
                               torch.is_deterministic_algorithms_warn_only_enabled(),
                               torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                               os.environ.get(CUBLAS_WORKSPACE_CONFIG))


def apply_settings(settings: DeterminismSettings) -> None:
    torch.use_deterministic_algorithms(settings.algorithms, warn_only=settings.warn_only)
    torch.backends.cudnn.deterministic = settings.cudnn_deterministic
    torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    if settings.cublas_workspace is None:
        os.environ.pop(CUBLAS_WORKSPACE_CONFIG, None)
    else:
        os.environ[CUBLAS_WORKSPACE_CONFIG] = settings.cublas_workspace


@contextlib.contextmanager
def restored_determinism() -> Iterator[None]:
    """The settings as they were before the block, once it ends: ``dcac experiments`` and ``dcac
    demo`` run several configs in one process, and a run with ``train.deterministic False`` must
    not inherit an earlier run's deterministic mode (slower, and strict)."""
    before = current_settings()
    try:
        yield
    finally:
        apply_settings(before)


def set_cublas_workspace() -> List[str]:
    """``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless already set; notes on what may keep cuBLAS from
    being deterministic. PyTorch sizes cuBLAS's workspace from the variable once per process, at
    the first cuBLAS call: it must be set before CUDA does any work."""
    notes = []
    if torch.cuda.is_initialized():
        notes.append(f"Deterministic: CUDA was initialised in this process before {CUBLAS_WORKSPACE_CONFIG} was set "
                     "(an earlier run of the same command): cuBLAS may keep its earlier workspace setting; run this "
                     "config in a process of its own to be sure of a deterministic run.")
    user_value = os.environ.get(CUBLAS_WORKSPACE_CONFIG)
    if user_value is None:
        os.environ[CUBLAS_WORKSPACE_CONFIG] = DETERMINISTIC_CUBLAS_WORKSPACES[0]
    elif user_value not in DETERMINISTIC_CUBLAS_WORKSPACES:
        notes.append(f"Deterministic: {CUBLAS_WORKSPACE_CONFIG} is {user_value!r} (set before the run, kept): "
                     f"PyTorch's deterministic mode needs {' or '.join(DETERMINISTIC_CUBLAS_WORKSPACES)} and stops "
                     "at the first cuBLAS call on a GPU otherwise.")
    return notes


def enable_determinism() -> List[str]:
    """Turn on everything ``train.deterministic True`` stands for; returns the lines to log (the
    first says what is on and what it costs)."""
    notes = set_cublas_workspace()
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False  # benchmarking picks the fastest algorithm, not a fixed one
    summary = ("Deterministic: train.deterministic True: PyTorch's deterministic algorithms (an op without one stops "
               "the run, naming it), cudnn.deterministic True, cudnn.benchmark False, "
               f"{CUBLAS_WORKSPACE_CONFIG}={os.environ[CUBLAS_WORKSPACE_CONFIG]}. On a GPU it costs speed "
               "(deterministic cuDNN convolutions, index_add_'s sort-based path in the PCL memory's class means, "
               "new memory filled on allocation), not accuracy; CPU runs repeat bit for bit without it.")
    return [summary] + notes


_NO_DETERMINISTIC_KERNEL = re.compile(r"^(\S+) does not have a deterministic implementation")


def explain_determinism_error(err: RuntimeError) -> Optional[ConfigError]:
    """The error to show for PyTorch's refusal of a non-deterministic op, or None for other errors."""
    text = str(err)
    if "use_deterministic_algorithms" not in text:
        return None
    op = _NO_DETERMINISTIC_KERNEL.match(text)
    what = (f"PyTorch has no deterministic implementation of {op.group(1)} on this device" if op
            else "PyTorch refused a non-deterministic operation: " + text.split(". ")[0].strip())
    return ConfigError(f"train.deterministic True: {what}. Set train.deterministic False to train with it (a "
                       "resumed run is then close to an uninterrupted one, not bitwise identical).")


@contextlib.contextmanager
def determinism_errors_explained(enabled: bool) -> Iterator[None]:
    """Under ``train.deterministic True``, PyTorch's refusal of an op as a one-line error naming
    the key (the log keeps the traceback through the chained error)."""
    try:
        yield
    except RuntimeError as err:
        explained = explain_determinism_error(err) if enabled else None
        if explained is None:
            raise
        raise explained from err


__all__ = ["CUBLAS_WORKSPACE_CONFIG", "DETERMINISTIC_CUBLAS_WORKSPACES", "DeterminismSettings", "apply_settings",
           "current_settings", "determinism_errors_explained", "enable_determinism", "explain_determinism_error",
           "restored_determinism", "set_cublas_workspace"]
