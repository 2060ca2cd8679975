"""train.fused_lora: peft LoRA layers that add their update by one in-place matrix product give
peft's outputs and gradients, keep peft's forward wherever it computes anything else, and a
dcac step the same losses and gradients as peft's layers."""
import pytest
import torch
from conftest import make_engine, one_dcac_step
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from dcac_plugin.speed import fused_lora
from dcac_plugin.speed.fused_lora import FusedLoraLinear, use_fused_lora


@pytest.fixture
def fused_calls(monkeypatch):
    """The input shapes of the calls that took the fused path."""
    calls = []
    original = fused_lora.lora_output

    def counted(x, *args):
        calls.append(tuple(x.shape))
        return original(x, *args)

    monkeypatch.setattr(fused_lora, "lora_output", counted)
    return calls


def adapted(bias=True, fused=True, **lora):
    """A frozen linear layer (12 -> 20 features) with a rank-4 LoRA adapter whose B is not
    zero (a fresh adapter's is, and would hide the update), as peft builds it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 20, bias=bias)).requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=3.0, target_modules=["0"], **lora), net)
    layer = net[0]
    for module in layer.lora_B.values():
        nn.init.normal_(module.weight)
    if fused:
        assert use_fused_lora(net) == 1
    return layer


def output_and_gradients(layer, x):
    """The output and the gradients of the input and of every trained parameter."""
    x = x.clone().requires_grad_()
    out = layer(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(3)))
    grads = {name: param.grad.clone() for name, param in layer.named_parameters() if param.grad is not None}
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("shape", [(6, 12), (2, 5, 12), (2, 3, 4, 12)])
@pytest.mark.parametrize("bias", [True, False])  # SD1.5: to_out.0 and ff.net.0.proj have one, to_q/k/v not
def test_fused_layer_gives_peft_output_and_gradients(fused_calls, shape, bias):
    x = torch.randn(shape)
    expected = output_and_gradients(adapted(bias, fused=False), x)
    assert fused_calls == []
    out, grad_x, grads = output_and_gradients(adapted(bias), x)
    assert fused_calls == [shape]
    torch.testing.assert_close(out, expected[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_x, expected[1], atol=1e-6, rtol=1e-5)
    assert set(grads) == set(expected[2]) == {"lora_A.default.weight", "lora_B.default.weight"}
    for name, grad in expected[2].items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4,
                                   msg=lambda text, name=name: f"{name}: {text}")


def test_fused_layer_applies_the_scale_alpha_over_r(fused_calls):
    layer = adapted(bias=False)
    x = torch.randn(3, 12)
    assert layer.scaling["default"] == pytest.approx(3.0 / 4)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        expected = x @ layer.base_layer.weight.t() + 0.75 * (x @ a.t() @ b.t())
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    assert len(fused_calls) == 1


def test_non_contiguous_input_and_a_base_output_that_is_a_view(fused_calls):
    layer = adapted()
    x = torch.randn(5, 2, 12).transpose(0, 1)  # not contiguous
    expected = adapted(fused=False)(x)
    # A forward hook may hand back a view of the base layer's output: added out of place.
    layer.base_layer.register_forward_hook(lambda module, args, out: out.t().t())
    out, grad_x, _ = output_and_gradients(layer, x)
    assert len(fused_calls) == 1
    torch.testing.assert_close(out, expected.detach(), atol=1e-6, rtol=1e-5)
    assert grad_x.shape == x.shape


def _two_active_adapters(layer):
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["0"]), nn.Sequential(layer), adapter_name="other")
    layer.set_adapter(["default", "other"])


@pytest.mark.parametrize("case,prepare", [
    ("merged", lambda layer: layer.merge()),
    ("disabled", lambda layer: layer.enable_adapters(False)),
    ("two active adapters", _two_active_adapters),
    ("no active adapter here", lambda layer: layer.set_adapter("absent")),
])
def test_peft_forward_kept_for_other_adapter_states(fused_calls, case, prepare):
    layer = adapted()
    reference = adapted(fused=False)
    prepare(layer)
    prepare(reference)
    x = torch.randn(4, 12)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(x), atol=1e-6, rtol=1e-5)
    assert fused_calls == [], case


@pytest.mark.parametrize("lora", [dict(lora_dropout=0.1), dict(use_dora=True), dict(lora_bias=True)])
def test_peft_forward_kept_for_dropout_dora_and_lora_bias(fused_calls, lora):
    layer = adapted(**lora)
    assert isinstance(layer, FusedLoraLinear)
    layer(torch.randn(4, 12))
    assert fused_calls == []


def test_peft_forward_kept_under_autocast_and_for_other_dtypes(fused_calls):
    layer = adapted()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(4, 12)).dtype == torch.bfloat16
    assert fused_calls == []
    layer.base_layer.double()  # peft casts the input to the adapter's dtype, and back
    assert layer(torch.randn(4, 12, dtype=torch.float64)).dtype == torch.float64
    assert fused_calls == []
    layer.double()
    layer(torch.randn(4, 12, dtype=torch.float64))
    assert fused_calls == [(4, 12)]


def test_peft_forward_kept_for_extra_arguments(fused_calls):
    layer = adapted()
    reference = adapted(fused=False)
    x = torch.randn(4, 12)
    names = ["default", "__base__", "default", "__base__"]
    with torch.no_grad():
        torch.testing.assert_close(layer(x, adapter_names=names), reference(x, adapter_names=names))
    assert fused_calls == []


def test_swap_keeps_parameters_and_state_dict_and_skips_other_layers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Conv2d(3, 3, 1))
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["0", "1", "2"]), net)
    params = dict(net.named_parameters())
    keys = list(net.state_dict())
    assert use_fused_lora(net) == 2  # the LoRA convolution is peft's own class, kept
    assert [type(m) for m in net] == [FusedLoraLinear, FusedLoraLinear, type(net[2])]
    assert type(net[2]) is not FusedLoraLinear and "lora" in type(net[2]).__module__
    assert list(net.state_dict()) == keys
    assert all(param is params[name] for name, param in net.named_parameters())
    assert use_fused_lora(net) == 0  # already swapped
    assert all(isinstance(m, LoraLinear) for m in net[:2])  # peft's own checks still see its class


@pytest.mark.parametrize("checkpointing", [False, True])  # True: the U-Net blocks recompute in the backward
def test_dcac_step_gives_the_same_losses_and_gradients_as_peft(tiny_sd, fused_calls, checkpointing, capsys):
    def step(enabled):
        engine, model, feedback = make_engine(tiny_sd, "off", "train.fused_lora", str(enabled),
                                              "train.gradient_checkpointing", str(checkpointing))
        unet = feedback.denoiser.unet
        torch.manual_seed(5)
        for name, param in unet.named_parameters():
            if ".lora_B." in name:  # fresh adapters have B = 0, which would hide their update
                nn.init.normal_(param, std=0.5)
        layers = sum(isinstance(m, LoraLinear) for m in unet.modules())
        fused = sum(isinstance(m, FusedLoraLinear) for m in unet.modules())
        return (*one_dcac_step(engine, model, feedback, diffusion_size=32), layers, fused)

    reference, reference_grads, layers, none_fused = step(False)
    assert none_fused == 0 and fused_calls == [] and "LoRA:" not in capsys.readouterr().out
    ours, our_grads, _, fused = step(True)
    assert fused == layers > 0
    assert f"LoRA: {layers} adapted layers" in capsys.readouterr().out
    # Each once in the forward; with checkpointing, those inside blocks once more in the backward.
    assert (len(fused_calls) > layers) if checkpointing else (len(fused_calls) == layers)
    for term in ("loss", "loss_id", "loss_pcl", "loss_dif"):
        assert ours[term] == pytest.approx(reference[term], rel=1e-5, abs=1e-7), term
    assert set(our_grads) == set(reference_grads)
    assert sum(".lora_A." in name or ".lora_B." in name for name in our_grads) == 2 * layers
    # To fp32 rounding; the adapters' gradients (small here) relative to the largest of them.
    # (Cross-attention over a one-token condition gives to_q and to_k no gradient beyond rounding.)
    lora_scale = max(float(grad.abs().max()) for name, grad in reference_grads.items() if ".lora_" in name)
    for name, grad in reference_grads.items():
        atol = 1e-5 * lora_scale if ".lora_" in name else 1e-6
        torch.testing.assert_close(our_grads[name], grad, atol=atol, rtol=1e-4,
                                   msg=lambda text, name=name: f"{name}: {text}")
