"""CUDA autocast's float32 normalisation layers, for steps that plan GPU memory on the CPU.

A symbolic step presents its tensors as CPU tensors, so autocast follows the CPU's op lists.
These mostly agree with CUDA's (matrix products, convolutions and attention in the lower
precision), except that CUDA autocast runs ``layer_norm`` and ``group_norm`` in float32
(their half-precision inputs are cast up, kept for the backward pass and the outputs are
float32) where CPU autocast keeps the lower precision. Every ResNet block and transformer
block of the U-Net and the VAE has such norms, so without this their activations would be
planned at half their GPU size. CUDA's other float32 ops (softmax, exp, pow, the losses)
act on float32 tensors here or on small ones.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

LOWER_PRECISION = (torch.float16, torch.bfloat16)
NORMS = (nn.LayerNorm, nn.GroupNorm)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 asks per device
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _inputs_to_float32(module: nn.Module, args: tuple):
    """Forward pre-hook: under autocast, half-precision inputs go to float32, as CUDA's
    autocast casts them for these layers; the cast is recorded by autograd like autocast's."""
    if not args or not torch.is_tensor(args[0]) or not _autocast_enabled(args[0].device.type):
        return None
    return tuple(arg.float() if torch.is_tensor(arg) and arg.dtype in LOWER_PRECISION else arg for arg in args)


@contextlib.contextmanager
def cuda_autocast_norms(modules: Iterable[nn.Module]) -> Iterator[int]:
    """While active, the LayerNorm and GroupNorm layers inside ``modules`` run in float32
    under autocast, as on a GPU. A hook on each layer (not a function-level override) so
    that gradient checkpointing's recomputation, which runs in the backward pass, casts the
    same way. Yields the number of layers hooked."""
    handles = [layer.register_forward_pre_hook(_inputs_to_float32)
               for module in modules for layer in module.modules() if isinstance(layer, NORMS)]
    try:
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()
