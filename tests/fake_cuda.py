"""One GPU that torch.cuda reports without one being there, for FakeTensors that present as
CUDA tensors (tests/test_cuda_paths_on_fake_tensors.py), and the dtype check of CUDA's matrix
products that FakeTensor's meta kernels leave out.

Run as a script, it checks in its own process whether this torch can record CUDA-autocast
operations on such tensors without a GPU: where it cannot, the process aborts instead of
raising, which must not take the test session with it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Callable, Optional

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

GPU = torch.device("cuda", 0)
Patch = Callable[[Any, str, Any], None]
aten = torch.ops.aten
# cuBLAS-backed products take operands of one dtype (CUDA: "expected mat1 and mat2 to have the
# same dtype"; addmm's added matrix too); the meta kernels of mm, addmm (nn.Linear) and mv let
# mixed dtypes through. bmm and baddbmm check already, and are listed for completeness.
MATRIX_PRODUCTS = frozenset({aten.mm.default, aten.addmm.default, aten.addmm_.default, aten.bmm.default,
                             aten.baddbmm.default, aten.baddbmm_.default, aten.addbmm.default, aten.addbmm_.default,
                             aten.mv.default, aten.addmv.default, aten.addmv_.default, aten.dot.default})


def pretend_one_gpu(patch: Patch) -> None:
    """torch.cuda answers what our code, torch.autocast and GradScaler ask as for one GPU
    with native bf16, and FakeTensorMode still keeps away from the CUDA runtime; ``patch``
    is ``setattr`` or a monkeypatch's ``setattr`` (which restores everything afterwards)."""
    # The engines (use_gpu), torch.autocast('cuda') and GradScaler('cuda') disable
    # themselves where CUDA is not available.
    patch(torch.cuda, "is_available", lambda: True)
    patch(torch.cuda, "device_count", lambda: 1)
    # The engine's device and the bf16 checks (autocast's, resolve_amp's) would initialise
    # CUDA, which fails without a driver.
    patch(torch.cuda, "current_device", lambda: 0)
    patch(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    # FakeTensorMode asks torch.cuda.is_available() whether it must avoid the CUDA runtime
    # (it then installs a no-op CUDA device guard and never constant-folds onto the device).
    # There still is no driver, so it must: otherwise autograd, recording an operation on a
    # fake CUDA tensor, asks the runtime for a stream and the process aborts.
    patch(FakeTensorMode, "avoid_device_init", property(lambda self: True))


class MatrixProductDtypes(TorchDispatchMode):
    """Raises, as CUDA does, on a matrix product whose tensor operands differ in dtype. Enter
    it inside the fake mode: it then sees the operations after autocast cast them."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATRIX_PRODUCTS:
            dtypes = [arg.dtype for arg in args if isinstance(arg, torch.Tensor)]
            if len(set(dtypes)) > 1:
                raise RuntimeError(f"{func}: operands of dtypes {', '.join(map(str, dtypes))}; CUDA's matrix "
                                   "products need one dtype")
        return func(*args, **(kwargs or {}))


def probe() -> None:
    """An autograd-recorded fp16 CUDA-autocast product of fake CUDA tensors (the operation
    that aborts where this torch cannot), in this process."""
    pretend_one_gpu(setattr)
    with FakeTensorMode():
        weight = torch.empty(4, 4, device=GPU, requires_grad=True)
        with torch.autocast("cuda", dtype=torch.float16):
            out = torch.ones(2, 4, device=GPU) @ weight
    if not (out.device == GPU and out.dtype == torch.float16 and out.requires_grad):
        raise SystemExit(f"unexpected result: {out.device}, {out.dtype}, requires_grad={out.requires_grad}")


def _without_core_dumps() -> None:
    """An aborting probe leaves no core file in the working tree."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def unsupported_reason(timeout: float = 300) -> Optional[str]:
    """Why fake CUDA tensors cannot run here (the probe's failure), or None where they can."""
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_without_core_dumps if os.name == "posix" else None)
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
    # Killed by a signal (an abort in C++): its first lines say why, a stack of frames follows.
    # An exception: its last line says what it was.
    why = " / ".join(lines[:2]) if done.returncode < 0 else lines[-1]
    return (f"torch {torch.__version__} cannot record CUDA-autocast operations on fake CUDA tensors without a GPU "
            f"(probe exit status {done.returncode}): {why}")


if __name__ == "__main__":
    probe()
