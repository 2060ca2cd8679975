"""Random number generator states, for an exact resume and for passes that must not draw.

torchreid's identity sampler draws from Python's ``random`` and numpy, augmentations from
torch and ``random``, the diffusion branch from torch. A checkpoint keeps all of them, in
types that ``torch.load(weights_only=True)`` accepts (tensors, lists, numbers).
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Dict, Iterator

import numpy as np
import torch


def capture_rng_state() -> Dict[str, Any]:
    """Python, numpy, torch (CPU and every CUDA device) generator states."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (evaluation, memory or cache passes) without moving any generator.

    Creating a DataLoader iterator draws a seed from torch's generator; wrapping the
    passes that are not training steps keeps the training stream the same whether or not
    (and how often) they run, which is what lets a resumed run match an uninterrupted one.
    """
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)
