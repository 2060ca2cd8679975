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
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj: Any, path: str) -> str:
    """``torch.save`` of ``obj`` to ``path``, atomically."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def _numpy_scalar_globals() -> list:
    """What a numpy scalar (torchreid stores ``rank1`` as one) needs to be rebuilt: data
    constructors that run no code, so ``weights_only`` may allow them."""
    import numpy as np

    multiarray = getattr(np, "_core", None) or np.core
    return [multiarray.multiarray.scalar, np.dtype] + [type(np.dtype(t)) for t in ("float64", "float32", "int64")]


def atomic_copy(source: str, path: str) -> str:
    """A copy of the file ``source`` at ``path``, written atomically."""
    import shutil

    def copy(handle: BinaryIO) -> None:
        with open(source, "rb") as original:
            shutil.copyfileobj(original, handle, length=16 << 20)

    return atomic_write(path, copy)


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Read a checkpoint safely; a file that needs arbitrary unpickling is refused.

    torchreid's own checkpoints (numpy scalars beside the tensors) load too: numpy
    scalar reconstruction is allow-listed, nothing else is.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
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


# The reference implementation's checkpoint layout (REFERENCE-NOTES, "Checkpoints of the
# reference"): its Re-ID encoder keys mapped onto ClipReID's; denoiser keys are dropped.
REFERENCE_ENCODER_KEYS = {"encoder.image_encoder.": "backbone.", "encoder.fc.": "classifier.",
                          "encoder.bnneck.": "bnneck."}


def is_reference_layout(weights: Dict[str, Any]) -> bool:
    return any(k.startswith("encoder.image_encoder.") for k in weights)


def from_reference_layout(weights: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The Re-ID encoder of a checkpoint released with the paper, under ClipReID's key names."""
    converted = {}
    for key, value in weights.items():
        for old, new in REFERENCE_ENCODER_KEYS.items():
            if key.startswith(old):
                converted[new + key[len(old):]] = value
    return converted


def model_state_dict(state: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The model weights of a checkpoint (``state_dict`` entry or the dict itself), DataParallel
    prefix removed, the reference implementation's layout converted."""
    weights = state.get("state_dict", state)
    weights = {k[len("module."):] if k.startswith("module.") else k: v for k, v in weights.items()}
    return from_reference_layout(weights) if is_reference_layout(weights) else weights


def check_same_identities(model: nn.Module, weights: Dict[str, torch.Tensor], path: str) -> None:
    """A resumed run must have the identities its checkpoint was trained on."""
    own = model.state_dict()
    mismatched = [k for k, v in weights.items() if k.startswith("classifier.") and k in own and own[k].shape != v.shape]
    if mismatched:
        key = mismatched[0]
        raise CheckpointError(
            f"Checkpoint {path} was trained on {weights[key].shape[0]} identities ({key}); this run has "
            f"{own[key].shape[0]} (the identities of its data.sources). "
            "model.resume continues the same training only. To start from its encoder alone (classifier, "
            "PCL memory and prompts fresh), use model.load_weights with this file instead.")


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
