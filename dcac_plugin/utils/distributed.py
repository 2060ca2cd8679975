"""torch.distributed for runs launched with torchrun: one process per GPU (nccl) or CPU (gloo).

torchreid has no distributed training. Outside torchrun every helper here is a no-op
(world size 1), so the engines call them unconditionally.
"""
from __future__ import annotations

import datetime
import itertools
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist

from dcac_config.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


# The way out of every inconsistent torchrun environment (torchrun sets RANK, WORLD_SIZE,
# LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT together; outside torchrun none is set).
ENVIRONMENT_FIX = ("Start distributed runs with torchrun, which sets them all (torchrun --nproc_per_node N -m "
                   "dcac_plugin.cli train ...), or unset RANK, WORLD_SIZE and LOCAL_RANK to train in one process.")


def _environment_integer(name: str, lowest: int) -> Optional[int]:
    """The whole number in environment variable ``name`` (None when unset); a
    :class:`UsageError` naming it when it holds anything else or less than ``lowest``."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise UsageError(f"Environment variable {name} is {text!r}, not a whole number. {ENVIRONMENT_FIX}") from None
    if value < lowest:
        raise UsageError(f"Environment variable {name} is {value}; it must be at least {lowest}. {ENVIRONMENT_FIX}")
    return value


def launched_info() -> DistInfo:
    """What torchrun's environment variables say (rank 0 of 1 without torchrun), checked for
    consistency: a stray ``RANK=1`` must not make a lone process skip everything rank 0 does
    (the run's lock, log and config.yaml) while still writing checkpoints. Raises
    :class:`UsageError` naming the variables that disagree."""
    rank, world_size = _environment_integer("RANK", 0), _environment_integer("WORLD_SIZE", 1)
    local_rank, local_world_size = _environment_integer("LOCAL_RANK", 0), _environment_integer("LOCAL_WORLD_SIZE", 1)
    if rank is None and world_size is None:
        if local_rank is not None:
            raise UsageError(f"LOCAL_RANK is {local_rank} but RANK and WORLD_SIZE are not set: torchrun sets all three. "
                             + ENVIRONMENT_FIX)
        return DistInfo()
    if rank is None or world_size is None:
        given, missing = ("RANK", "WORLD_SIZE") if rank is not None else ("WORLD_SIZE", "RANK")
        raise UsageError(f"{given} is {os.environ[given].strip()} but {missing} is not set: a process of a distributed "
                         f"run needs both. {ENVIRONMENT_FIX}")
    if rank >= world_size:
        raise UsageError(f"RANK {rank} is not below WORLD_SIZE {world_size} (ranks are 0..WORLD_SIZE-1). "
                         + ENVIRONMENT_FIX)
    local_rank = 0 if local_rank is None else local_rank
    if local_rank > rank:
        raise UsageError(f"LOCAL_RANK {local_rank} is above RANK {rank}: a process's rank on its machine cannot exceed "
                         f"its rank in the job. {ENVIRONMENT_FIX}")
    if local_world_size is not None and local_rank >= local_world_size:
        raise UsageError(f"LOCAL_RANK {local_rank} is not below LOCAL_WORLD_SIZE {local_world_size}. " + ENVIRONMENT_FIX)
    return DistInfo(rank, world_size, local_rank)


def rendezvous_address() -> Tuple[str, int]:
    """(MASTER_ADDR, MASTER_PORT): where the processes of a distributed run meet, checked (the
    host must resolve, the port be a TCP port) so that a typo is one line, not a hang."""
    host = os.environ.get("MASTER_ADDR", "").strip()
    if not host:
        raise UsageError(f"WORLD_SIZE is {os.environ['WORLD_SIZE'].strip()} but MASTER_ADDR is not set: the processes "
                         f"meet at MASTER_ADDR:MASTER_PORT (rank 0's host). {ENVIRONMENT_FIX}")
    port = _environment_integer("MASTER_PORT", 1)
    if port is None or port > 65535:
        raise UsageError(f"MASTER_PORT is {os.environ.get('MASTER_PORT', '(not set)')!r}: set it to a free TCP port "
                         f"(1..65535) on rank 0's host, the same for every process. {ENVIRONMENT_FIX}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise UsageError(f"MASTER_ADDR {host!r} is no host this machine can find ({getattr(err, 'strerror', err)}): "
                         "set it to rank 0's host name or IP address, the same for every process.") from None
    return host, port


def check_launch_environment() -> DistInfo:
    """:func:`launched_info`, and for a distributed run its rendezvous address: every
    inconsistency in one line before any work."""
    info = launched_info()
    if info.enabled:
        rendezvous_address()
    return info


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(use_gpu: bool, backend: str = "", timeout_minutes: float = 60.0,
                     rendezvous_minutes: float = 5.0) -> DistInfo:
    """Join the process group torchrun set up; a single process returns rank 0 of 1.

    ``backend`` '' picks nccl when training on GPUs, gloo otherwise. The processes first meet
    at the rendezvous (:func:`rendezvous_store`), which waits at most ``rendezvous_minutes``;
    the collectives' timeout is long because rank 0 evaluates alone while the others wait at
    a barrier.
    """
    info = launched_info()
    if not info.enabled or is_initialized():
        return current_info() if is_initialized() else info
    backend = backend or ("nccl" if use_gpu else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise UsageError("train.dist_backend nccl needs CUDA GPUs; use gloo (or use_gpu False) on CPU.")
    if use_gpu or backend == "nccl":
        torch.cuda.set_device(process_gpu(info.local_rank, torch.cuda.device_count(), backend))
    collective_timeout = datetime.timedelta(minutes=timeout_minutes)
    store = rendezvous_store(info, rendezvous_minutes * 60.0, collective_timeout)
    dist.init_process_group(backend=backend, store=store, rank=info.rank, world_size=info.world_size,
                            timeout=collective_timeout)
    return current_info()


# Rendezvous of this process's runs (dcac experiments runs several, each joining a new group).
_rendezvous_count = itertools.count()
# How often a waiting process looks again; Ctrl-C is honoured between looks.
POLL_SECONDS = 0.2


def _agent_serves_store() -> bool:
    """torchrun's agent hosts the store at MASTER_ADDR:MASTER_PORT (every process is a client),
    as torch's own env:// rendezvous assumes when torchrun says so."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)


def _polls(deadline: float) -> Iterator[None]:
    """Yield until ``deadline`` (time.monotonic), sleeping in short steps: a KeyboardInterrupt
    arrives between them, where a wait inside torch's C++ would ignore Ctrl-C."""
    while True:
        yield
        if time.monotonic() >= deadline:
            return
        time.sleep(POLL_SECONDS)


def _timeout_text(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} s"


def _open_store(info: DistInfo, host: str, port: int, deadline: float, waited: float) -> dist.TCPStore:
    """The job's key-value store at ``host:port``: rank 0 hosts it (unless torchrun's agent
    does), the others connect once it listens (probed from Python, so that waiting neither
    ignores Ctrl-C nor fills the console with torch's retry logs)."""
    timeout = datetime.timedelta(seconds=max(1.0, deadline - time.monotonic()))
    if info.rank == 0 and not _agent_serves_store():
        try:
            return dist.TCPStore(host, port, info.world_size, True, timeout, wait_for_workers=False,
                                 multi_tenant=True)
        except RuntimeError as err:
            busy = "in use" in str(err).lower()
            problem = f"port {port} is in use on this machine" if busy else str(err).strip().splitlines()[0]
            raise UsageError(f"Distributed: rank 0 cannot open the rendezvous at MASTER_ADDR:MASTER_PORT {host}:{port} "
                             f"({problem}). Set MASTER_PORT to a free port (torchrun: --master-port), the same for "
                             "every process.") from None
    for _ in _polls(deadline):
        try:
            with socket.create_connection((host, port), timeout=1.0):
                break
        except OSError:
            continue
    else:
        raise UsageError(f"Distributed: rank {info.rank} found no rendezvous at MASTER_ADDR:MASTER_PORT {host}:{port} "
                         f"within {_timeout_text(waited)} (train.dist_rendezvous_minutes): rank 0 did not start or "
                         "listens elsewhere. Start every rank with the same MASTER_ADDR and MASTER_PORT (torchrun "
                         "does), or unset RANK and WORLD_SIZE to train in one process.")
    return dist.TCPStore(host, port, None, False, timeout)


def rendezvous_store(info: DistInfo, timeout_seconds: float,
                     collective_timeout: datetime.timedelta) -> dist.PrefixStore:
    """The store the process group is built on, once all ``info.world_size`` processes have
    arrived; waits at most ``timeout_seconds`` and then says how many came.

    torch's own env:// rendezvous waits as long as the collectives may (an hour by default,
    see :func:`init_distributed`) inside C++, deaf to Ctrl-C, so a missing rank hung a run for
    an hour. Here each process counts itself in and looks at the count from Python.
    """
    host, port = rendezvous_address()
    deadline = time.monotonic() + timeout_seconds
    if info.is_main:
        print(f"Distributed: waiting for {info.world_size} processes at {host}:{port} (at most "
              f"{_timeout_text(timeout_seconds)}, train.dist_rendezvous_minutes)", flush=True)
    store = _open_store(info, host, port, deadline, timeout_seconds)
    key = f"dcac/arrived/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{next(_rendezvous_count)}"
    arrived = store.add(key, 1)
    for _ in _polls(deadline):
        arrived = store.add(key, 0)
        if arrived >= info.world_size:
            break
    else:
        raise UsageError(f"Distributed: only {arrived} of {info.world_size} processes (WORLD_SIZE) reached the "
                         f"rendezvous at {host}:{port} within {_timeout_text(timeout_seconds)} "
                         "(train.dist_rendezvous_minutes). Start every rank (torchrun --nproc_per_node N starts "
                         "them all), or unset RANK and WORLD_SIZE to train in one process.")
    store.set_timeout(collective_timeout)
    return dist.PrefixStore("default_pg", store)


def process_gpu(local_rank: int, visible_gpus: int, backend: str) -> int:
    """The GPU a process of this machine trains on: its local rank's. nccl refuses two ranks on
    one GPU, so more processes than GPUs is an error there; gloo (collectives staged through
    the CPU) shares the GPUs round-robin, which lets a one-GPU machine run several processes,
    e.g. to test a distributed run."""
    if local_rank < visible_gpus:
        return local_rank
    if backend == "nccl":
        raise UsageError(f"Process with LOCAL_RANK {local_rank} but {visible_gpus} GPU(s) visible: nccl needs one GPU "
                           "per process; start at most that many (--nproc_per_node), or use train.dist_backend gloo "
                           "to share GPUs between processes.")
    return local_rank % visible_gpus


def current_info() -> DistInfo:
    if not is_initialized():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()


def _backend_device() -> torch.device:
    """Where the process group's backend moves tensors: nccl CUDA ones only, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order (first dims may differ).

    Returns ``tensor`` itself in a single process. The result is identical on every rank.
    """
    if world_size() == 1:
        return tensor
    device = _backend_device()
    local = tensor.to(device).contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=device))
    sizes = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(sizes),) + tuple(local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:size] for part, size in zip(gathered, sizes)]).to(tensor.device)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank.

    DDP broadcasts them before each training forward, but each rank's last forward of an
    epoch updates its own copy; eval-mode passes between epochs must see rank 0's, the ones
    a checkpoint keeps (otherwise a resumed run would differ from an uninterrupted one).
    """
    if world_size() == 1:
        return
    for buffer in module.buffers():
        if buffer.dtype.is_floating_point or buffer.dtype in (torch.int64, torch.int32):
            staged = buffer.data.to(_backend_device())
            dist.broadcast(staged, src=0)
            buffer.data.copy_(staged)


def all_ranks_true(flag: bool, device: Optional[torch.device] = None) -> bool:
    """True only if ``flag`` holds on every rank (so that all ranks stop together)."""
    if world_size() == 1:
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device or "cpu")
    value = value.to(_backend_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def all_gather_objects(obj: Any) -> List[Any]:
    """Every rank's picklable ``obj`` in rank order ([obj] in a single process).

    Only for objects this job made itself (RNG states): unpickling runs in trusted peers.
    """
    if world_size() == 1:
        return [obj]
    gathered: List[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any) -> Any:
    """Rank 0's picklable ``obj`` on every rank (``obj`` itself in a single process); what the
    other ranks pass is ignored. Only for objects this job made or read itself."""
    if world_size() == 1:
        return obj
    holder = [obj if is_main_process() else None]
    dist.broadcast_object_list(holder, src=0, device=_backend_device())
    return holder[0]


def shard(items: list) -> list:
    """This rank's share of ``items`` (every world_size-th item from its rank)."""
    return list(items)[rank()::world_size()]


def wrap_ddp(module: torch.nn.Module, use_gpu: bool, sync_buffers_every_step: bool = True,
             find_unused_parameters: bool = False) -> torch.nn.Module:
    """``module`` in DistributedDataParallel in a distributed run, else itself.

    DDP averages the gradients of the parameters that require them; frozen weights
    (the U-Net under LoRA, the VAE) are only broadcast once, at construction. Buffers are
    broadcast from rank 0 before every forward unless ``sync_buffers_every_step`` is off.
    """
    if world_size() == 1 or not any(p.requires_grad for p in module.parameters()):
        return module
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    kwargs = {"find_unused_parameters": find_unused_parameters}
    if not sync_buffers_every_step:
        # Newer torch renamed broadcast_buffers (synced at init either way).
        name = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else "broadcast_buffers")
        kwargs[name] = False
    device_ids = [torch.cuda.current_device()] if use_gpu else None
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)
