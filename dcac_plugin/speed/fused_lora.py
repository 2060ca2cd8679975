"""LoRA's update added into the frozen layer's output by one matrix product (paper eq. 9).

peft computes a LoRA linear layer as ``base(x) + lora_B(lora_A(x)) * scaling``: the rank-r
product ``lora_B(...)`` is written to a new full-width tensor, then multiplied by the scale
into another and added into a third, and the backward multiplies the full-width gradient
by the scale once more. Where the layer's output is wide (the GEGLU input projections of the
SD1.5 U-Net: 2560 to 10240 features) these passes, and the first touch of the memory they
allocate, cost more than the rank-r products themselves: on a 2-core CPU at batch 8 the
scale alone took about 12 ms per call on the 16x16 latents.

``addmm_(A x, B^T, alpha=scaling)`` on the base layer's output computes the same sum in one
pass over memory that already exists, and its backward scales only the rank-r gradients.
The maths is eq. 9's (the same products and sums, rounded once instead of three times:
results agree to fp32 rounding). Anything peft computes otherwise (merged or disabled
adapters, several active adapters, dropout, DoRA and other variants, a LoRA bias, mixed
batches) and any call under autocast or with mixed dtypes keeps peft's own forward.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn


def lora_output(x: torch.Tensor, base_layer: nn.Linear, lora_A: nn.Linear, lora_B: nn.Linear,
                scaling: float) -> torch.Tensor:
    """DCAC eq. 9, h' = hW + (alpha / r) hAB, as the base layer's output plus one in-place
    ``addmm_`` of the rank-r product (``x`` has any number of leading dimensions)."""
    rows = x.reshape(-1, x.shape[-1])
    out = base_layer(rows)
    update = (lora_A(rows), lora_B.weight.t())
    if out._base is None and out.is_contiguous():
        out.addmm_(*update, alpha=scaling)
    else:  # a view (e.g. from a forward hook): add out of place, as peft would
        out = torch.addmm(out, *update, alpha=scaling)
    return out.view(*x.shape[:-1], out.shape[-1])


class FusedLoraLinear(LoraLinear):
    """peft's LoRA ``Linear`` whose plain training forward (one active, unmerged adapter
    without dropout, variant or bias, on an ``nn.Linear``, one dtype, no autocast) is
    :func:`lora_output`; every other call is peft's. Same parameters and state-dict keys."""

    def fusable_adapter(self, x: torch.Tensor, has_extra_arguments: bool) -> Optional[str]:
        """The adapter this call fuses, or None where it keeps peft's forward."""
        if has_extra_arguments or self.disable_adapters or self.merged or x.dim() < 2:
            return None
        if type(self.base_layer) is not nn.Linear or torch.is_autocast_enabled(x.device.type):
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1:
            return None
        name = active[0]
        if name in getattr(self, "lora_variant", {}) or getattr(self, "use_dora", {}).get(name, False):
            return None
        lora_A, lora_B = self.lora_A[name], self.lora_B[name]
        if not isinstance(self.lora_dropout[name], nn.Identity) or lora_A.bias is not None or lora_B.bias is not None:
            return None
        dtypes = {x.dtype, self.base_layer.weight.dtype, lora_A.weight.dtype, lora_B.weight.dtype}
        return name if len(dtypes) == 1 else None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.fusable_adapter(x, bool(args or kwargs))
        if name is None:
            return super().forward(x, *args, **kwargs)
        return lora_output(x, self.base_layer, self.lora_A[name], self.lora_B[name], self.scaling[name])


def use_fused_lora(module: nn.Module) -> int:
    """Make every peft LoRA ``Linear`` inside ``module`` a :class:`FusedLoraLinear`, in place
    (its parameters, adapters and state-dict keys stay as they are); returns how many."""
    count = 0
    for child in module.modules():
        if type(child) is LoraLinear:  # not subclasses (peft's quantised layers), whose forward differs
            child.__class__ = FusedLoraLinear
            count += 1
    return count
