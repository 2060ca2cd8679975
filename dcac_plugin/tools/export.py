"""A trained encoder as a self-contained file for deployment: ``dcac export``.

Serving a Re-ID model should not need this package, torchreid or open_clip: ONNX runs in
onnxruntime (any language), TorchScript in libtorch. Both files hold the image-to-feature
encoder only; the caller resizes and normalises as the run did (``cmd_export`` prints how).
Each export is checked against the PyTorch model before the command reports success.
"""
from __future__ import annotations

import argparse
import io
import os.path as osp
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dcac_config.errors import CommandFailed, UsageError

from ..utils.checkpoint import atomic_write
from .outputs import check_output_files

ONNX_INPUT, ONNX_OUTPUT = "images", "features"
# Larger gaps than this between an exported file and PyTorch mean a broken export, not float noise.
EXPORT_TOLERANCE = 1e-3


class InferenceEncoder(nn.Module):
    """Normalised image batch [B, 3, H, W] -> L2-normalised feature [B, D].

    ClipReID already returns normalised features in eval mode, but other torchreid models
    return raw ones; normalising here gives every exported file the same contract
    (cosine similarity is a dot product). The wrapped model always stays in eval mode:
    in train mode it returns classifier logits, not features.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def train(self, mode: bool = True) -> InferenceEncoder:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model(images), dim=1)


def _example(batch: int, height: int, width: int) -> torch.Tensor:
    # A fixed seed makes the checks reproducible; random values exercise the whole network.
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, height, width, generator=generator)


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise RuntimeError(f"Exported encoder returns shape {tuple(a.shape)}, PyTorch {tuple(b.shape)}.")
    return float((a - b).abs().max())


@torch.no_grad()
def export_torchscript(model: nn.Module, path: str, height: int, width: int) -> str:
    """Trace the encoder of ``model`` at ``height`` x ``width`` and save it to ``path`` atomically.

    The saved file is reloaded and compared with ``model`` on a batch of a different size
    than the traced one, so a batch size frozen into the graph is caught here.
    """
    encoder = InferenceEncoder(model).cpu()
    # check_trace is off: its graph comparison fails spuriously once the same module classes
    # were traced before in the process (e.g. by an ONNX export); the reload check below is stricter.
    # torch marks TorchScript deprecated (FutureWarning); it is still what libtorch loads, and
    # whoever asked for this format has chosen it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(encoder, _example(2, height, width), check_trace=False)
        atomic_write(path, lambda handle: torch.jit.save(traced, handle))
        reloaded = torch.jit.load(path, map_location="cpu")
    example = _example(3, height, width)
    diff = _max_abs_diff(reloaded(example), encoder(example))
    if diff > EXPORT_TOLERANCE:
        raise CommandFailed(f"TorchScript export {path} differs from PyTorch by {diff:.2e}.")
    return path


@torch.no_grad()
def export_onnx(model: nn.Module, path: str, height: int, width: int, opset: int = 17) -> str:
    """The encoder of ``model`` as ONNX (input "images" [batch, 3, H, W], output "features"
    [batch, D], batch dynamic), written to ``path`` atomically."""
    encoder = InferenceEncoder(model).cpu()
    buffer = io.BytesIO()
    # Without gradients, eval-mode nn.MultiheadAttention takes its fused fast path
    # (aten::_native_multi_head_attention), which has no ONNX symbolic: switch it off for the trace.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    # The TorchScript-based exporter (dynamo=False): torch's default dynamo exporter needs the
    # extra onnxscript package, while this one handles the ViT and a dynamic batch through
    # dynamic_axes. torch warns it is deprecated; setup.cfg pins torch below 2.15, where it exists.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # TracerWarnings come from nn.MultiheadAttention's shape assertions, which hold for every
            # batch size; verify_onnx checks the graph on a batch other than the traced one.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(encoder, (_example(2, height, width),), buffer, dynamo=False, opset_version=opset,
                              input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                              dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}})
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    payload = buffer.getvalue()
    return atomic_write(path, lambda handle: handle.write(payload))


@torch.no_grad()
def verify_onnx(path: str, model: nn.Module, example: torch.Tensor) -> float:
    """Max absolute difference between onnxruntime on ``path`` and ``model`` on ``example``."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("Checking an ONNX export needs onnxruntime: pip install onnxruntime") from error

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: example.cpu().numpy()})
    return _max_abs_diff(torch.from_numpy(onnx_out), InferenceEncoder(model).cpu()(example.cpu()))


def onnx_opsets() -> Optional[Tuple[int, int]]:
    """The ONNX opsets torch's TorchScript-based exporter (the one used here) can write, or None
    when this torch does not say (the range moves with torch's releases)."""
    try:
        from torch.onnx import _constants
    except ImportError:
        return None
    highest = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", None) or getattr(_constants, "ONNX_MAX_OPSET",
                                                                                           None)
    lowest = getattr(_constants, "ONNX_MIN_OPSET", None)
    return (int(lowest), int(highest)) if lowest and highest else None


def check_opset(opset: int) -> None:
    """Refuse, before the model is loaded, an opset torch cannot export to (it would fail deep
    inside the export with a traceback)."""
    supported = onnx_opsets()
    if supported and not supported[0] <= opset <= supported[1]:
        raise UsageError(f"--opset {opset}: torch {torch.__version__} exports ONNX opsets {supported[0]} to "
                         f"{supported[1]}; choose one of those (default 17).")


def _default_output(run: str, fmt: str) -> str:
    folder = run if osp.isdir(run) else osp.dirname(osp.abspath(run))
    return osp.join(folder, "encoder.onnx" if fmt == "onnx" else "encoder.torchscript.pt")


def cmd_export(args: argparse.Namespace) -> int:
    """``dcac export``: the output is checked before the model is loaded (an existing file is
    replaced only with --overwrite)."""
    from ..data.transforms import evaluation_interpolation
    from .inference import load_trained_model

    output = args.output or _default_output(args.run, args.format)
    check_output_files([output], args.overwrite, "--output")
    if args.format == "onnx":
        check_opset(args.opset)
    model, cfg, weights = load_trained_model(args.run, args.config_file)
    height, width = cfg.data.height, cfg.data.width
    if args.format == "onnx":
        export_onnx(model, output, height, width, opset=args.opset)
        diff = verify_onnx(output, model, _example(3, height, width))
        print(f"ONNX encoder (opset {args.opset}, input \"{ONNX_INPUT}\", output \"{ONNX_OUTPUT}\") "
              f"from {weights} -> {output}")
        print(f"onnxruntime vs PyTorch on a batch of 3: max abs diff {diff:.2e}")
        if diff > EXPORT_TOLERANCE:
            raise CommandFailed(f"The ONNX file {output} differs from PyTorch by {diff:.2e}, more than "
                                f"{EXPORT_TOLERANCE}.")
    else:
        export_torchscript(model, output, height, width)
        print(f"TorchScript encoder from {weights} -> {output} (reloaded and checked against PyTorch)")
    print(f"Input: float32 [batch, 3, {height}, {width}], RGB; resize "
          f"({evaluation_interpolation(cfg)}) to {height}x{width}, scale to [0, 1], then normalise with "
          f"mean {list(cfg.data.norm_mean)} and std {list(cfg.data.norm_std)}.")
    with torch.no_grad():
        dim = InferenceEncoder(model)(_example(1, height, width)).shape[1]
    print(f"Output: float32 [batch, {dim}], L2-normalised (cosine similarity = dot product).")
    return 0


__all__ = ["InferenceEncoder", "cmd_export", "export_onnx", "export_torchscript",
           "verify_onnx"]
