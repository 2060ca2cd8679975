"""Checkpoints: written atomically, read with ``weights_only=True``.

torchreid's ``save_checkpoint`` writes in place (a crash mid-write leaves a truncated
file) and stores numpy scalars, which torch >= 2.6 refuses to load safely. Ours hold
tensors and plain Python types only.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from dcac_config.errors import UserError

from .atomic_files import atomic_copy, atomic_save, atomic_write  # noqa: F401  (where the package imports them from)
from .file_kinds import not_a_torch_file


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be used; the message names the file and the fix."""


def _numpy_scalar_globals() -> list:
    """What a numpy scalar (torchreid stores ``rank1`` as one) needs to be rebuilt: data
    constructors that run no code, so ``weights_only`` may allow them."""
    import numpy as np

    multiarray = getattr(np, "_core", None) or np.core
    return [multiarray.multiarray.scalar, np.dtype] + [type(np.dtype(t)) for t in ("float64", "float32", "int64")]


def _load_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file (an encoder export): nothing in it is unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except SafetensorError as err:
        raise CheckpointError(f"Checkpoint {path} is corrupt or truncated: {err}") from None


def is_torch_save_file(path: str) -> bool:
    """Whether ``path`` is a file ``torch.save`` writes: a zip archive (its format since
    PyTorch 1.6) or the legacy pickle, which opens with pickle's PROTO opcode (0x80)."""
    import zipfile

    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Read a checkpoint safely; a file that needs arbitrary unpickling is refused.

    torchreid's own checkpoints (numpy scalars beside the tensors) load too: numpy
    scalar reconstruction is allow-listed, nothing else is. An encoder export
    (``.safetensors``) gives its tensors.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        return _load_safetensors(path)
    kind = not_a_torch_file(path)
    if kind:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is {kind}. Name a checkpoint file "
                              "(e.g. <run>/model/best.pth.tar) or a run folder.")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"Refusing to load {path}: it needs arbitrary unpickling (it stores objects other than "
            f"tensors and plain Python types, which could run code). Re-save its state_dict, or "
            f"convert it on a trusted machine. Detail: {str(err).splitlines()[0]}"
        ) from None
    except PermissionError:
        raise CheckpointError(f"Cannot read checkpoint {path}: permission denied.") from None
    except (RuntimeError, EOFError, OSError) as err:  # a truncated zip archive can fail its seeks (EINVAL)
        raise CheckpointError(f"Checkpoint {path} is corrupt or truncated: {err}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"Checkpoint {path} holds a {type(state).__name__}, not a dict of tensors.")
    return state


def non_finite_tensors(state: Any, prefix: str = "") -> List[Tuple[str, int, int]]:
    """(name, NaN count, infinity count) of every floating-point tensor in ``state`` (nested
    dicts, lists and tuples, as a checkpoint holds them) that is not all finite; names are
    the dotted keys, e.g. ``state_dict.backbone.proj`` or ``optimizer.state.3.exp_avg``."""
    if isinstance(state, torch.Tensor):
        if not (state.is_floating_point() or state.is_complex()) or bool(torch.isfinite(state).all()):
            return []
        nans = int(torch.isnan(state).sum())
        return [(prefix or "(the tensor)", nans, int((~torch.isfinite(state)).sum()) - nans)]
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    found = []
    for key, value in items:
        found += non_finite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return found


def _non_finite_count(nans: int, infs: int) -> str:
    return " and ".join(part for part in (f"{nans} NaN" if nans else "", f"{infs} infinite" if infs else "") if part)


def check_finite_weights(state: Any, path: str) -> None:
    """Refuse weights (or a whole training state) with NaN or infinite values: features, losses
    and every later step computed from them would be NaN, and nothing would say why."""
    found = non_finite_tensors(state)
    if not found:
        return
    named = ", ".join(f"{name} ({_non_finite_count(nans, infs)})" for name, nans, infs in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    raise CheckpointError(
        f"Weights file {path} holds NaN or infinite values in {len(found)} tensor{'s' if len(found) > 1 else ''}: "
        f"{named}{more}; every feature and loss computed from it would be NaN. Use another checkpoint (e.g. an "
        "earlier model/model.pth.tar-<epoch> of the same run) or train again.")


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


def find_run_config(source: str) -> Optional[str]:
    """``config.yaml`` of the run a directory or checkpoint belongs to, if there is one."""
    folder = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
    for candidate in (os.path.join(folder, "config.yaml"), os.path.join(os.path.dirname(folder), "config.yaml")):
        if os.path.isfile(candidate):
            return candidate
    return None


def find_weights(source: str) -> str:
    """The weights a run directory stands for: its encoder export, else its best, else its latest
    checkpoint (what ``dcac extract`` and ``model.load_weights`` read); a file is itself."""
    if not os.path.isdir(source):
        if not os.path.isfile(source):
            raise CheckpointError(f"Checkpoint not found: {source} is neither a checkpoint file nor a run directory.")
        return source
    for candidate in ("encoder.safetensors", os.path.join("model", "best.pth.tar"),
                      os.path.join("model", "latest.pth.tar")):
        path = os.path.join(source, candidate)
        if os.path.isfile(path):
            return path
    raise CheckpointError(f"Run directory {source} has no encoder.safetensors and no model/best.pth.tar or "
                          "model/latest.pth.tar; name a checkpoint file instead.")


CLASSIFIER_PREFIX = "classifier."
Shape = Tuple[int, ...]


class WeightsFit(NamedTuple):
    """How a checkpoint's weights line up with a model's; each field holds only what differs."""

    unexpected: List[str]  # in the checkpoint only
    missing: List[str]  # in the model only (its classifier aside when the checkpoint has none)
    reshaped: List[Tuple[str, Shape, Shape]]  # (key, checkpoint's shape, model's), the identity count aside
    identities: Optional[Tuple[int, int]]  # (checkpoint's, model's) classifier rows, when only they differ
    classifier_absent: bool  # the checkpoint has no classifier (a test-time encoder)

    @property
    def architecture_differs(self) -> bool:
        return bool(self.unexpected or self.missing or self.reshaped)


def compare_weights(model: nn.Module, weights: Dict[str, torch.Tensor]) -> WeightsFit:
    """Key by key: a classifier that differs in its number of rows only is another set of identities,
    not another architecture; a checkpoint without any classifier is an encoder."""
    own = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    theirs = {key: tuple(value.shape) for key, value in weights.items()}
    classifier_absent = (any(k.startswith(CLASSIFIER_PREFIX) for k in own)
                         and not any(k.startswith(CLASSIFIER_PREFIX) for k in theirs))
    identities, reshaped = None, []
    for key in (k for k in own if k in theirs and own[k] != theirs[k]):
        if key.startswith(CLASSIFIER_PREFIX) and own[key][1:] == theirs[key][1:]:
            identities = (theirs[key][0], own[key][0])
        else:
            reshaped.append((key, theirs[key], own[key]))
    missing = [k for k in own if k not in theirs and not (classifier_absent and k.startswith(CLASSIFIER_PREFIX))]
    unexpected = [k for k in theirs if k not in own]
    return WeightsFit(unexpected, missing, reshaped, identities, classifier_absent)


def _examples(keys: List[str], count: int = 3) -> str:
    return ", ".join(keys[:count]) + (", ..." if len(keys) > count else "")


def _differences(fit: WeightsFit, weights: Dict[str, torch.Tensor]) -> str:
    """The ways the architectures differ, only those that do."""
    encoder_keys = [k for k in weights if not k.startswith(CLASSIFIER_PREFIX)]
    if set(encoder_keys) <= set(fit.unexpected):
        return (f"none of its tensors outside the classifier is in the model (its: {_examples(fit.unexpected)}; "
                f"the model's: {_examples(fit.missing)}), so it holds another architecture")
    parts = []
    if fit.reshaped:
        key, theirs, own = fit.reshaped[0]
        more = f" and {len(fit.reshaped) - 1} more" if len(fit.reshaped) > 1 else ""
        parts.append(f"{key} is {list(theirs)} in the checkpoint and {list(own)} in the model{more}")
    if fit.unexpected:
        parts.append(f"{len(fit.unexpected)} of its tensors are not in the model ({_examples(fit.unexpected)})")
    if fit.missing:
        parts.append(f"{len(fit.missing)} of the model's tensors are not in it ({_examples(fit.missing)})")
    return "; ".join(parts)


def _written_by(path: str) -> str:
    """Which model and input size the run that wrote ``path`` trained, from its config.yaml, if it has one."""
    import yaml

    config = find_run_config(path)
    if config is None:
        return ""
    try:
        with open(config, encoding="utf-8") as handle:
            cfg = yaml.safe_load(handle)
        model, data = cfg["model"]["name"], cfg["data"]
        return (f" It was written by a run of model.name {model} with data.height {data['height']}, "
                f"data.width {data['width']} ({config}).")
    except (OSError, yaml.YAMLError, KeyError, TypeError):  # a config.yaml that is not a run's: say nothing
        return ""


def architecture_error(model: nn.Module, fit: WeightsFit, weights: Dict[str, torch.Tensor],
                       path: str) -> CheckpointError:
    """The checkpoint holds another model than this run builds: what differs, who wrote it, the fix."""
    return CheckpointError(
        f"Checkpoint {path} does not fit this run's model ({type(model).__name__}): "
        f"{_differences(fit, weights)}.{_written_by(path)} Load weights of a run with this run's model.name "
        "and data.height/width, or set those to the ones of the run that wrote it.")


def classifier_note(fit: WeightsFit) -> str:
    """What becomes of the classifier when it does not come from the checkpoint (empty when it does)."""
    if fit.identities:
        trained, here = fit.identities
        return (f"its classifier was trained on {trained} identities and this run has {here}: the classifier is "
                "skipped and starts fresh (evaluation uses the encoder only)")
    if fit.classifier_absent:
        return ("it holds no classifier (a test-time encoder): the classifier starts fresh (evaluation uses the "
                "encoder only)")
    return ""


def check_resumable(model: nn.Module, weights: Dict[str, torch.Tensor], path: str) -> None:
    """A resumed run must build the model its checkpoint was trained as, on the same identities."""
    fit = compare_weights(model, weights)
    if fit.architecture_differs:
        raise architecture_error(model, fit, weights, path)
    if fit.identities:
        trained, here = fit.identities
        raise CheckpointError(
            f"Checkpoint {path} was trained on {trained} identities; this run has {here} (the identities of its "
            "data.sources), and the rest of the model matches. model.resume continues the same training only. To "
            "start from its encoder alone (classifier, PCL memory and prompts fresh), use model.load_weights with "
            "this file instead.")


def apply_weights(model: nn.Module, weights: Dict[str, torch.Tensor], path: str) -> str:
    """Load ``weights`` (read from ``path``) into ``model``; returns :func:`classifier_note`.

    A classifier trained on another number of identities, or none (an encoder export), leaves
    the model's own: evaluation uses the encoder only, training starts the classifier fresh.
    Any other difference is an error naming only what differs.
    """
    fit = compare_weights(model, weights)
    if fit.architecture_differs:
        raise architecture_error(model, fit, weights, path)
    if fit.identities:
        weights = {k: v for k, v in weights.items() if not k.startswith(CLASSIFIER_PREFIX)}
    check_finite_weights(weights, path)
    model.load_state_dict(weights, strict=False)
    return classifier_note(fit)


# What dcac's latent cache file holds (diffusion.latent_cache): VAE posteriors, no model.
LATENT_CACHE_KEYS = frozenset({"fingerprint", "keys", "mean", "std"})


def weights_in(state: Dict[str, Any], path: str) -> Dict[str, torch.Tensor]:
    """:func:`model_state_dict` of a checkpoint read from ``path``, refused (naming what the file
    holds instead) when it is no model's weights: the latent cache, or entries that are no tensors."""
    if LATENT_CACHE_KEYS <= set(state):
        raise CheckpointError(f"{path} is a run's latent cache (VAE posteriors of its training images), not model "
                              "weights. Name the run folder or one of its checkpoints (model/best.pth.tar).")
    weights = model_state_dict(state)
    others = [key for key, value in weights.items() if not torch.is_tensor(value)]
    if others:
        raise CheckpointError(f"{path} holds no model weights: its entries {', '.join(others[:4])}"
                              f"{', ...' if len(others) > 4 else ''} are not tensors. Name a checkpoint of a run "
                              "(model/best.pth.tar, encoder.safetensors) or a run folder.")
    return weights


def load_model_weights(model: nn.Module, path: str) -> str:
    """``model.load_weights``: a checkpoint, an encoder export or a run directory (:func:`find_weights`)
    into ``model``, as :func:`apply_weights`; returns the log line saying what was loaded."""
    path = find_weights(path)
    note = apply_weights(model, weights_in(load_checkpoint(path), path), path)
    return f"Loaded weights from {path}" + (f": {note}" if note else "")


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
    return atomic_write(path, lambda handle: handle.write(payload), size=len(payload))


def load_encoder(model: nn.Module, path: str) -> None:
    """Fill ``model``'s backbone and BNNeck from :func:`export_encoder`'s file (strictly)."""
    weights = _load_safetensors(path)
    own = {k for k in model.state_dict() if k.startswith(ENCODER_PREFIXES)}
    if set(weights) != own:
        raise CheckpointError(f"Encoder file {path} does not fit {type(model).__name__}: missing "
                              f"{sorted(own - set(weights))[:5]}, unexpected {sorted(set(weights) - own)[:5]}.")
    check_finite_weights(weights, path)
    model.load_state_dict(weights, strict=False)
