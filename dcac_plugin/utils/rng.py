"""Random number generator states, for an exact resume and for passes that must not draw.

torchreid's identity sampler draws from Python's ``random`` and numpy, augmentations from
torch and ``random``, the diffusion branch from torch. A checkpoint keeps all of them, in
types that ``torch.load(weights_only=True)`` accepts (tensors, lists, numbers).

A resume may run on another machine than the one that saved: the CUDA generator states are
put back GPU by GPU where both have the GPU, and the per-rank states rank by rank where both
runs have the rank; what does not match is said in one line each, never an index error.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Dict, Iterator, List, Optional, Sequence

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


def restore_rng_state(state: Dict[str, Any]) -> Optional[str]:
    """Put back what :func:`capture_rng_state` returned; returns a note when the CUDA generator
    states saved and the GPUs visible here differ in number (None when they match)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    return restore_cuda_rng_states(state.get("cuda") or [])


def visible_gpus() -> int:
    """GPUs this process sees (0 without CUDA); counting them does not initialise CUDA."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def restore_cuda_rng_states(saved: Sequence[torch.Tensor]) -> Optional[str]:
    """Each visible GPU's generator from the saved state of the GPU with its index.

    Not ``set_rng_state_all``: it pairs the saved list with every visible GPU, so a resume with
    fewer GPUs failed with an index error and one with more left the extra GPUs unrestored without
    a word. The GPUs the checkpoint has no state for keep the seed the launcher gave them.
    """
    visible = visible_gpus()
    for device in range(min(len(saved), visible)):
        torch.cuda.set_rng_state(saved[device], device=device)
    return cuda_mismatch_note(len(saved), visible)


def _count(count: int, word: str, plural: str) -> str:
    return f"{count} {word if count == 1 else plural}"


def _gpus(count: int) -> str:
    return _count(count, "GPU", "GPUs")


def cuda_mismatch_note(saved: int, visible: int) -> Optional[str]:
    """One line on CUDA generator states saved for ``saved`` GPUs and restored with ``visible``."""
    if saved == visible:
        return None
    if saved == 0:
        return (f"RNG: the checkpoint holds no CUDA generator states (saved without CUDA): the CUDA generators of the "
                f"{_gpus(visible)} visible here start from the seed")
    head = f"RNG: checkpoint has CUDA generator states for {_gpus(saved)}, {visible} visible here: "
    if visible == 0:
        return head + "not used"
    if saved > visible:
        return head + f"restored {visible}, the other {saved - visible} not used"
    return head + f"restored {saved}; {_gpus(visible - saved)} visible beyond the checkpoint's: seeded, not restored"


def _ranks(first: int, last: int) -> str:
    return f"rank {first}" if first == last else f"ranks {first}-{last}"


def world_size_note(saved: int, world_size: int) -> Optional[str]:
    """One line on per-rank states saved by ``saved`` processes and restored by ``world_size``."""
    if saved == world_size:
        return None
    if saved == 0:
        return ("RNG: the checkpoint holds no RNG states: every generator keeps the seed this run started from "
                "(train.seed + rank); training continues correctly, but not bit-identically to the interrupted run")
    if saved > world_size:
        what = f"restored for {_ranks(0, world_size - 1)}, not used for {_ranks(world_size, saved - 1)}"
    else:
        what = (f"restored for {_ranks(0, saved - 1)}; none saved for {_ranks(saved, world_size - 1)}, which keep "
                "their seed (train.seed + rank)")
    return (f"RNG: the checkpoint holds the RNG states of {_count(saved, 'process', 'processes')} and this run has "
            f"{world_size}: {what}; training continues correctly, but not bit-identically to the interrupted run")


def restore_rank_rng_state(states: Sequence[Dict[str, Any]], rank: int, world_size: int) -> List[str]:
    """This rank's generators from a checkpoint's per-rank states (``state["rng"]``, one entry per
    rank of the saving run, in rank order); returns the notes on what did not match.

    A rank the saving run also had continues its own streams, whatever the world size: each rank
    then still draws a stream of its own (ranks beyond the saved ones keep ``train.seed + rank``).
    """
    notes = [world_size_note(len(states), world_size)]
    if rank < len(states):
        notes.append(restore_rng_state(states[rank]))
    return [note for note in notes if note]


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
        # Same process, same GPUs: a note could only say that CUDA was not in use yet at capture.
        restore_rng_state(state)
