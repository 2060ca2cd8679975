"""Frozen convolutions with few output rows as one matrix product on the CPU.

At batch 8 the SD1.5 U-Net's inner levels see 4x4 and 2x2 latents, where a 3x3 convolution
of 1280 channels has 59 MB of weights for 32 or 128 output positions. oneDNN re-lays those
weights out into its blocked formats on every call, for the forward and again for the
input-gradient kernel, and on this kind of problem spends more time doing so than
multiplying. Unfolding the input (im2col) and multiplying once by the weight matrix as
stored reads the weights once and runs at GEMM speed: measured on a 2-core AVX-512 CPU, a
1280-channel 3x3 convolution at 2x2 (batch 8) takes 5-7 ms forward and 6-8 ms for the input
gradient this way, against 10-32 ms and 25-30 ms through oneDNN. With 512 rows and more
oneDNN is as fast or faster, so larger convolutions keep it.

The maths is the convolution's (the same products, summed in another order: results agree
to fp32 rounding). Only convolutions whose weights get no gradient take this path, so the
backward computes the input gradient alone, by the transposed product and a fold (col2im).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

# Rows of the matrix product (batch x output positions) up to which it beats oneDNN on the CPU.
MAX_MATRIX_PRODUCT_ROWS = 256

Pair = Tuple[int, int]


def output_size(size: Pair, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> Pair:
    """Height and width of a convolution's output (the formula of ``nn.Conv2d``'s docs)."""
    return tuple((size[i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
                 for i in range(2))


class _FrozenConvolutionAsMatrixProduct(torch.autograd.Function):
    """conv2d(x, weight, bias) as im2col(x) @ weight^T; the gradient reaches ``x`` only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias, stride: Pair, padding: Pair,
                dilation: Pair) -> torch.Tensor:
        batch, _, height, width = x.shape
        out_channels, _, *kernel = weight.shape
        kernel = tuple(kernel)
        out_height, out_width = output_size((height, width), kernel, stride, padding, dilation)
        columns = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
        columns = columns.transpose(1, 2).reshape(batch * out_height * out_width, -1)
        matrix = weight.reshape(out_channels, -1).t()  # a view: the weights as stored, no copy
        out = torch.addmm(bias, columns, matrix) if bias is not None else columns.mm(matrix)
        ctx.save_for_backward(weight)
        ctx.geometry = (x.shape, kernel, stride, padding, dilation)
        # Contiguous, as oneDNN's output would be: a channels-last view would carry that layout
        # into the next (oneDNN) convolutions.
        return out.view(batch, out_height, out_width, out_channels).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (weight,) = ctx.saved_tensors
        (batch, _, height, width), kernel, stride, padding, dilation = ctx.geometry
        out_channels = weight.shape[0]
        rows = grad_output.permute(0, 2, 3, 1).reshape(-1, out_channels)
        grad_columns = rows.mm(weight.reshape(out_channels, -1))
        grad_columns = grad_columns.view(batch, -1, grad_columns.shape[1]).transpose(1, 2)
        grad_x = F.fold(grad_columns, (height, width), kernel, dilation=dilation, padding=padding, stride=stride)
        return grad_x, None, None, None, None, None


class MatrixProductConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that computes as one matrix product where that is faster: on the CPU,
    in fp32 outside autocast, for frozen weights and at most :data:`MAX_MATRIX_PRODUCT_ROWS`
    output rows. Anything else (a GPU, autocast, trained weights, a large input) is the
    ordinary convolution. Same parameters, same state-dict keys."""

    def takes_matrix_product(self, x: torch.Tensor) -> bool:
        """Whether this call goes through the matrix product."""
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or torch.is_autocast_enabled("cpu"):
            return False
        if self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return False
        if self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad):
            return False
        out_height, out_width = output_size(tuple(x.shape[-2:]), self.kernel_size, self.stride, self.padding,
                                            self.dilation)
        return x.shape[0] * out_height * out_width <= MAX_MATRIX_PRODUCT_ROWS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.takes_matrix_product(x):
            return _FrozenConvolutionAsMatrixProduct.apply(x, self.weight, self.bias, self.stride, self.padding,
                                                           self.dilation)
        return super().forward(x)


def use_matrix_product_convolutions(module: nn.Module) -> int:
    """Make every plain ``nn.Conv2d`` inside ``module`` a :class:`MatrixProductConv2d`, in
    place (its parameters, hooks and state-dict keys stay as they are); returns how many."""
    count = 0
    for child in module.modules():
        if type(child) is nn.Conv2d:  # not subclasses, whose forward may differ
            child.__class__ = MatrixProductConv2d
            count += 1
    return count
