"""The device a benchmark runs on (``--device``), checked before any work, and its name for the figures."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from dcac_config.errors import UsageError

from .memory import proc_kb


def checked_device(device: Optional[str]) -> torch.device:
    """``device`` as a torch device the benchmarks can run on (``None``: cuda when available,
    else cpu), or a :class:`UsageError` (``dcac: error: ...``) before any work starts. A bench
    that measures in a child process must fail here: in the child, the parent waiting for its
    figures would never hear of it."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"Unknown device {device!r}; use cpu or cuda.") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"Unknown device {device!r}; use cpu or cuda.")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"Device {device!r}, but torch sees no CUDA device here; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"Device {device!r}, but torch sees {torch.cuda.device_count()} CUDA device(s) here.")
    return dev


def device_name(dev: torch.device) -> str:
    """The GPU's name, or ``cpu (N threads)``."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({torch.get_num_threads()} threads)"


def memory_capacity(dev: torch.device) -> Tuple[Optional[int], str]:
    """Bytes a benchmark step may use on ``dev`` and a sentence saying so, with ``{gib}`` for
    their GiB: a GPU's total memory, or on the CPU the memory the kernel reports available
    now (``MemAvailable``); ``None`` where it cannot be read."""
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return int(props.total_memory), f"{dev} ({props.name}) has {{gib}} GiB"
    available = proc_kb("/proc/meminfo", "MemAvailable")
    return (None if available is None else available * 1024), "this machine has {gib} GiB available"

