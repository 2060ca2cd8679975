"""Checkpoints: written atomically, read with ``weights_only=True``.

torchreid's ``save_checkpoint`` writes in place (a crash mid-write leaves a truncated
file) and stores numpy scalars, which torch >= 2.6 refuses to load safely. Ours hold
tensors and plain Python types only.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any, BinaryIO, Callable, Dict, Optional

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and the fix."""


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> str:
    """``write`` into a temporary file in the same folder, fsync, then rename over ``path``:
    a crash leaves either the old file or the new one, never a truncated one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj: Any, path: str) -> str:
    """``torch.save`` of ``obj`` to ``path``, atomically."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Read a checkpoint safely; a file that needs arbitrary unpickling is refused."""
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"Refusing to load {path}: it needs arbitrary unpickling (it stores objects other than "
            f"tensors and plain Python types, which could run code). Re-save its state_dict, or "
            f"convert it on a trusted machine. Detail: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError) as err:
        raise CheckpointError(f"Checkpoint {path} is corrupt or truncated: {err}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"Checkpoint {path} holds a {type(state).__name__}, not a dict of tensors.")
    return state


def model_state_dict(state: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The model weights of a checkpoint (``state_dict`` entry or the dict itself), DataParallel prefix removed."""
    weights = state.get("state_dict", state)
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in weights.items()}


def load_model_weights(model: nn.Module, path: str, skip_mismatched: Optional[tuple] = ("classifier.",)) -> list:
    """Load a checkpoint's weights into ``model``; returns the keys that were skipped.

    Keys starting with a prefix in ``skip_mismatched`` whose shape differs (a classifier
    trained on another number of identities) are skipped: evaluation uses the encoder
    only. Any other mismatch is an error naming the keys.
    """
    weights = model_state_dict(load_checkpoint(path))
    own = model.state_dict()
    skipped = [k for k, v in weights.items()
               if k in own and own[k].shape != v.shape and skip_mismatched and k.startswith(skip_mismatched)]
    for key in skipped:
        weights.pop(key)
    wrong_shape = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in weights and k not in skipped]
    unexpected = [k for k in weights if k not in own]
    if wrong_shape or missing or unexpected:
        raise CheckpointError(
            f"Checkpoint {path} does not fit model {type(model).__name__}: "
            f"shape mismatch {wrong_shape[:5]}, missing {missing[:5]}, unexpected {unexpected[:5]}. "
            "Check model.name (and data.height/width for ViTs) against the run that wrote it."
        )
    model.load_state_dict(weights, strict=False)
    return skipped


ENCODER_PREFIXES = ("backbone.", "bnneck.")


def export_encoder(model: nn.Module, path: str) -> str:
    """The test-time encoder alone (backbone + BNNeck, no classifier), as safetensors.

    Written atomically; safetensors stores tensors only, so loading it runs no code.
    """
    from safetensors.torch import save

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
    if not weights:
        raise CheckpointError(f"{type(model).__name__} has no backbone/bnneck weights to export.")
    payload = save(weights, metadata={"format": "pt", "content": "dcac-reid encoder"})
    return atomic_write(path, lambda handle: handle.write(payload))


def load_encoder(model: nn.Module, path: str) -> None:
    """Fill ``model``'s backbone and BNNeck from :func:`export_encoder`'s file (strictly)."""
    from safetensors.torch import load_file

    weights = load_file(path)
    own = {k for k in model.state_dict() if k.startswith(ENCODER_PREFIXES)}
    if set(weights) != own:
        raise CheckpointError(f"Encoder file {path} does not fit {type(model).__name__}: missing "
                              f"{sorted(own - set(weights))[:5]}, unexpected {sorted(set(weights) - own)[:5]}.")
    model.load_state_dict(weights, strict=False)
