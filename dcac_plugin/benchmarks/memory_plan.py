"""Peak GPU memory of a training step, planned without a GPU.

A symbolic (``meta``) step runs under :class:`LiveStorageTracker`, a dispatch mode that sees
every tensor the step creates (activations, autocast copies, gradients, optimizer state,
temporaries) and follows each storage until it is freed, on top of the storages that exist
before the step (weights, buffers, the batch, the previous step's gradients and the optimizer
state). Its peak is what ``torch.cuda.max_memory_allocated`` would report for the step:
sizes rounded up to the CUDA caching allocator's 512-byte blocks. Not planned: the cuBLAS and
cuDNN workspaces, which PyTorch allocates through the same caching allocator (so a measured
``max_memory_allocated`` includes them); the allocator's cached but free blocks (in
``max_memory_reserved``) and the CUDA context (in neither) are outside what it reports anyway.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .autocast_policy import cuda_autocast_norms
from .step import TrainingStep

CUDA_BLOCK_BYTES = 512  # the caching allocator rounds every allocation up to this
GIB = 2**30
OTHER = "activations_and_temporaries"


class LiveStorageTracker(TorchDispatchMode):
    """Bytes of the live tensor storages, their peak and what they held at the peak.

    Storages that exist before the mode is entered are made known with :meth:`register`
    (under a category); every storage an operation returns while the mode is active is
    counted from then on (under ``activations_and_temporaries`` unless registered), and
    uncounted when it is freed. Views share their base's storage and count once.
    """

    def __init__(self, granularity: int = 1) -> None:
        super().__init__()
        self.granularity = max(1, int(granularity))
        self.current = 0
        self.peak = 0
        self.peak_by_category: Dict[str, int] = {}
        self._by_category: Dict[str, int] = {}
        self._live: Dict[int, tuple] = {}  # storage id -> (bytes, category, weakref to the storage)

    def _rounded(self, nbytes: int) -> int:
        return -(-nbytes // self.granularity) * self.granularity

    def _add(self, tensor: torch.Tensor, category: Optional[str]) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse and other storage-less tensors
            return
        key = storage._cdata
        if key in self._live:
            nbytes, old, ref = self._live[key]
            if category is not None and category != old:  # relabel, e.g. last step's gradients
                self._by_category[old] -= nbytes
                self._by_category[category] = self._by_category.get(category, 0) + nbytes
                self._live[key] = (nbytes, category, ref)
            return
        category = category or OTHER
        nbytes = self._rounded(storage.nbytes())
        # Storages keep their Python object alive as long as they live, so the weak
        # reference dies (and its callback runs) exactly when the storage is freed.
        ref = weakref.ref(storage, lambda _ref, key=key: self._free(key))
        self._live[key] = (nbytes, category, ref)
        self._by_category[category] = self._by_category.get(category, 0) + nbytes
        self.current += nbytes
        if self.current > self.peak:
            self.peak = self.current
            self.peak_by_category = dict(self._by_category)

    def _free(self, key: int) -> None:
        nbytes, category, _ = self._live.pop(key)
        self._by_category[category] -= nbytes
        self.current -= nbytes

    def register(self, tensors: Iterable[Optional[torch.Tensor]], category: str) -> None:
        """Count these (existing) tensors' storages under ``category``."""
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                self._add(tensor, category)

    def by_category(self) -> Dict[str, int]:
        """Live bytes per category now."""
        return {name: nbytes for name, nbytes in self._by_category.items() if nbytes}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._add(leaf, None)
        return out


@dataclass
class MemoryPlan:
    """Peak bytes of a step and what was live at the peak, by category."""

    peak_bytes: int
    at_peak: Dict[str, int]

    def as_gib(self, digits: int = 2) -> Dict[str, object]:
        return {"peak_gb": round(self.peak_bytes / GIB, digits),
                "at_peak_gb": {name: round(nbytes / GIB, digits) for name, nbytes in self.at_peak.items() if nbytes}}


def _module_tensors(step: TrainingStep) -> Iterator[torch.Tensor]:
    """Parameters and buffers of the networks, the loss modules and the PCL memory."""
    engine = step.engine
    for module in step.modules() + [engine.memory, engine.criterion]:
        if isinstance(module, torch.nn.Module):
            yield from module.parameters()
            yield from module.buffers()


def _batch_tensors(step: TrainingStep) -> Iterator[torch.Tensor]:
    """The batch on the device, and the cached posteriors the dcac step looks up."""
    yield from (leaf for leaf in tree_leaves(step.data) if isinstance(leaf, torch.Tensor))
    cache = getattr(step.engine, "latent_cache", None)
    if cache is not None:
        yield from (cache.mean, cache.std)


def _optimizer_state(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for state in optimizer.state.values():
        yield from (value for value in state.values() if isinstance(value, torch.Tensor))


def _trained_parameters(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for group in optimizer.param_groups:
        yield from (param for param in group["params"] if param.requires_grad)


def prime_previous_step(step: TrainingStep) -> None:
    """Leave what an earlier step leaves: gradients on every trained parameter (the engine
    clears them only after the forward pass) and the optimizer's state (created by its first
    ``step``), so that the tracked step is a steady-state one."""
    with torch.no_grad():
        for param in _trained_parameters(step.optimizer):
            param.grad = torch.zeros_like(param)
    step.optimizer.step()


def _tracker_for(step: TrainingStep, granularity: int) -> LiveStorageTracker:
    tracker = LiveStorageTracker(granularity)
    tracker.register(_module_tensors(step), "weights")
    tracker.register(_batch_tensors(step), "batch")
    tracker.register((param.grad for param in _trained_parameters(step.optimizer)), "gradients")
    tracker.register(_optimizer_state(step.optimizer), "optimizer_state")
    return tracker


def plan_training_memory(step: TrainingStep, granularity: int = CUDA_BLOCK_BYTES) -> MemoryPlan:
    """Peak GPU memory of one steady-state training step of ``step`` (built on ``meta``)."""
    with step.scope():
        prime_previous_step(step)
        tracker = _tracker_for(step, granularity)
        with cuda_autocast_norms(step.modules()), tracker:
            step.run()
    return MemoryPlan(tracker.peak, tracker.peak_by_category)


def plan_inference_memory(step: TrainingStep, granularity: int = CUDA_BLOCK_BYTES) -> MemoryPlan:
    """Peak GPU memory of the Re-ID encoder's eval-mode forward on the step's batch."""
    model = step.model
    # The encoder as exported: the ID classifier is training-only.
    classifier = set(map(id, model.classifier.parameters())) if hasattr(model, "classifier") else set()
    with step.scope():
        tracker = LiveStorageTracker(granularity)
        tracker.register((tensor for tensor in [*model.parameters(), *model.buffers()] if id(tensor) not in classifier),
                         "weights")
        tracker.register(_batch_tensors(step), "batch")
        with cuda_autocast_norms([step.model]), tracker:
            step.inference()
    return MemoryPlan(tracker.peak, tracker.peak_by_category)
