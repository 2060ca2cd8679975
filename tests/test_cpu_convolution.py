"""train.cpu_matmul_convolutions: frozen convolutions with few output rows as one matrix
product on the CPU give the convolution's outputs and input gradients, and a dcac step the
same losses and gradients as oneDNN's convolutions."""
import pytest
import torch
from conftest import make_engine, one_dcac_step
from torch import nn

from dcac_plugin.speed import cpu_convolution
from dcac_plugin.speed.cpu_convolution import (MAX_MATRIX_PRODUCT_ROWS, MatrixProductConv2d,
                                               use_matrix_product_convolutions)


@pytest.fixture
def matrix_product_calls(monkeypatch):
    """How many convolutions went through the matrix product."""
    calls = []
    original = cpu_convolution._FrozenConvolutionAsMatrixProduct.apply

    def counted(*args):
        calls.append(tuple(args[0].shape))
        return original(*args)

    monkeypatch.setattr(cpu_convolution._FrozenConvolutionAsMatrixProduct, "apply", counted)
    return calls


def frozen_pair(bias=True, **conv):
    """The same frozen convolution as nn.Conv2d and as MatrixProductConv2d."""
    torch.manual_seed(0)
    reference = nn.Conv2d(**conv, bias=bias).requires_grad_(False)
    swapped = nn.Conv2d(**conv, bias=bias).requires_grad_(False)
    swapped.load_state_dict(reference.state_dict())
    assert use_matrix_product_convolutions(swapped) == 1
    return reference, swapped


def output_and_input_gradient(conv, x, grad_output_seed=3):
    x = x.clone().requires_grad_()
    out = conv(x)
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_output_seed))
    out.backward(grad_output)
    return out.detach(), x.grad


@pytest.mark.parametrize("conv,size", [
    (dict(in_channels=64, out_channels=48, kernel_size=3, padding=1), 4),  # resnet conv at 4x4
    (dict(in_channels=64, out_channels=48, kernel_size=3, padding=1), 2),  # at 2x2: most taps hit padding
    (dict(in_channels=64, out_channels=64, kernel_size=3, padding=1, stride=2), 8),  # downsampler, 8x8 -> 4x4
    (dict(in_channels=96, out_channels=32, kernel_size=1), 4),  # conv_shortcut, proj_in / proj_out
    (dict(in_channels=16, out_channels=24, kernel_size=(3, 5), padding=(2, 1), dilation=(2, 1)), 3),
])
@pytest.mark.parametrize("bias", [True, False])
def test_matrix_product_gives_the_convolutions_output_and_input_gradient(matrix_product_calls, conv, size, bias):
    reference, swapped = frozen_pair(bias=bias, **conv)
    x = torch.randn(8, conv["in_channels"], size, size)
    assert swapped.takes_matrix_product(x)
    expected_out, expected_grad = output_and_input_gradient(reference, x)
    out, grad = output_and_input_gradient(swapped, x)
    assert matrix_product_calls == [tuple(x.shape)]
    assert out.shape == expected_out.shape and out.is_contiguous() and grad.is_contiguous()  # layout as oneDNN's
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_what_keeps_the_ordinary_convolution(matrix_product_calls):
    conv = dict(in_channels=8, out_channels=8, kernel_size=3, padding=1)
    _, swapped = frozen_pair(**conv)
    small = torch.randn(8, 8, 4, 4)  # 128 rows
    assert swapped.takes_matrix_product(small)
    rows_over = torch.randn(MAX_MATRIX_PRODUCT_ROWS // 16 + 1, 8, 4, 4)
    assert not swapped.takes_matrix_product(rows_over)
    assert swapped.takes_matrix_product(torch.randn(MAX_MATRIX_PRODUCT_ROWS // 16, 8, 4, 4))
    assert not swapped.takes_matrix_product(small.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not swapped.takes_matrix_product(small)
    swapped.weight.requires_grad_(True)  # a trained convolution needs its weight gradient
    assert not swapped.takes_matrix_product(small)
    swapped.weight.requires_grad_(False)
    swapped.bias.requires_grad_(True)
    assert not swapped.takes_matrix_product(small)
    grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2).requires_grad_(False)
    reflected = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect").requires_grad_(False)
    same = nn.Conv2d(8, 8, 3, padding="same").requires_grad_(False)
    for conv in (grouped, reflected, same):
        use_matrix_product_convolutions(conv)
        assert not conv.takes_matrix_product(small)
        torch.testing.assert_close(conv(small), nn.Conv2d.forward(conv, small))
    # A trained weight gets its gradient through the ordinary path.
    trained = nn.Conv2d(8, 8, 3, padding=1)
    use_matrix_product_convolutions(trained)
    trained(small).sum().backward()
    assert trained.weight.grad is not None and matrix_product_calls == []


def test_swap_keeps_parameters_and_state_dict_keys_and_skips_subclasses():
    class OwnConv(nn.Conv2d):
        pass

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 1), OwnConv(4, 4, 1)), nn.Linear(4, 4))
    params = {name: param for name, param in net.named_parameters()}
    keys = list(net.state_dict())
    assert use_matrix_product_convolutions(net) == 2
    assert [type(m).__name__ for m in net.modules()].count("MatrixProductConv2d") == 2
    assert type(net[1][1]) is OwnConv
    assert list(net.state_dict()) == keys
    assert all(param is params[name] for name, param in net.named_parameters())
    assert use_matrix_product_convolutions(net) == 0  # already swapped


@pytest.mark.parametrize("checkpointing", [False, True])  # True: the U-Net blocks recompute in the backward
def test_dcac_step_gives_the_same_losses_and_gradients_as_onednn(tiny_sd, matrix_product_calls, checkpointing):
    diffusion_size = 32  # 4x4 and 2x2 latents at batch 8: every U-Net convolution qualifies

    def step(enabled):
        engine, model, feedback = make_engine(tiny_sd, "off", "train.cpu_matmul_convolutions", str(enabled),
                                              "train.gradient_checkpointing", str(checkpointing))
        unet = feedback.denoiser.unet
        swapped = sum(isinstance(m, MatrixProductConv2d) for m in unet.modules())
        convolutions = sum(isinstance(m, nn.Conv2d) for m in unet.modules())
        return (*one_dcac_step(engine, model, feedback, diffusion_size), swapped, convolutions)

    onednn, onednn_grads, none_swapped, convolutions = step(False)
    assert none_swapped == 0 and matrix_product_calls == []
    ours, our_grads, swapped, _ = step(True)
    assert swapped == convolutions > 0
    # Each once in the forward; with checkpointing, those inside blocks once more in the backward.
    assert (len(matrix_product_calls) > convolutions) if checkpointing else (len(matrix_product_calls) == convolutions)
    for term in ("loss", "loss_id", "loss_pcl", "loss_dif"):
        assert ours[term] == pytest.approx(onednn[term], rel=1e-5, abs=1e-7), term
    assert set(our_grads) == set(onednn_grads) and any(name.startswith("fb.") for name in our_grads)
    for name, grad in onednn_grads.items():
        torch.testing.assert_close(our_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
