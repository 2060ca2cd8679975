"""torch.distributed for runs launched with torchrun: one process per GPU (nccl) or CPU (gloo).

torchreid has no distributed training. Outside torchrun every helper here is a no-op
(world size 1), so the engines call them unconditionally.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist

from .errors import UsageError


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


def launched_info() -> DistInfo:
    """What torchrun's environment variables say (rank 0 of 1 without torchrun)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(use_gpu: bool, backend: str = "", timeout_minutes: float = 60.0) -> DistInfo:
    """Join the process group torchrun set up; a single process returns rank 0 of 1.

    ``backend`` '' picks nccl when training on GPUs, gloo otherwise. The timeout is long
    because rank 0 evaluates alone while the others wait at a barrier.
    """
    info = launched_info()
    if not info.enabled or is_initialized():
        return current_info() if is_initialized() else info
    backend = backend or ("nccl" if use_gpu else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise UsageError("train.dist_backend nccl needs CUDA GPUs; use gloo (or use_gpu False) on CPU.")
    if use_gpu or backend == "nccl":
        torch.cuda.set_device(process_gpu(info.local_rank, torch.cuda.device_count(), backend))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return current_info()


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
