"""Peak memory of the current process, for the benchmarks."""
from __future__ import annotations

import resource
from typing import Optional


def peak_rss_kb() -> int:
    """Peak resident set size of this process so far, in KB.

    Linux's ``ru_maxrss`` survives fork and exec, so a child started by a process that
    already peaked (the Market part) would report the parent's peak; ``VmHWM`` belongs to
    this process's own address space. ``ru_maxrss`` (KB on Linux) serves where there is no
    ``/proc``.
    """
    peak = proc_status_kb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def proc_status_kb(field: str) -> Optional[int]:
    """A memory figure of this process from ``/proc/self/status`` (``VmRSS``: now,
    ``VmHWM``: peak) in KB, or ``None`` without ``/proc``."""
    return proc_kb("/proc/self/status", field)


def proc_kb(path: str, field: str) -> Optional[int]:
    """The KB figure ``field`` of a ``/proc`` file of ``Name: value kB`` lines (``/proc/meminfo``,
    ``/proc/self/status``), or ``None`` where there is no such file or line."""
    try:
        with open(path) as status:
            return next((int(line.split()[1]) for line in status if line.startswith(field + ":")), None)
    except OSError:
        return None
