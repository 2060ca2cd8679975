import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcac_plugin.cli import main
from dcac_plugin.diffusion import (DiffusionDenoiser, apply_finetune_mode, load_diffusion_components,
                                   save_tiny_stable_diffusion)
from dcac_plugin.diffusion.conditioning import CONDITION_MODES, ConditionNet, CorrelationAwareCondition
from dcac_plugin.models.clip_reid import clip_vit_tiny


def softmax_by_hand(row, tau):
    exps = [math.exp(v / tau) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def silu_by_hand(x):
    return x / (1.0 + math.exp(-x))


def batchnorm_by_hand(x, eps=1e-5):
    """Train-mode BatchNorm1d with weight 1 and bias 0: standardise each column with the batch's
    biased variance."""
    return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps)


@pytest.fixture
def inputs():
    torch.manual_seed(0)
    return torch.randn(3, 5), torch.randn(3, 4), torch.tensor([0, 4, 2])  # logits, features, labels


def test_modes_are_the_four_known():
    assert set(CONDITION_MODES) == {"correlation", "class", "class_weighted", "instance"}


def test_prompts_init_and_one_token_shape(inputs):
    torch.manual_seed(0)
    cond = CorrelationAwareCondition(num_classes=2000, feature_dim=4, prompt_dim=768)
    assert cond.prompts.shape == (2000, 768)
    assert abs(float(cond.prompts.detach().std()) - 1.0) < 0.01 and abs(float(cond.prompts.detach().mean())) < 0.01
    logits = torch.randn(3, 2000)
    assert cond(logits, torch.randn(3, 4), torch.tensor([0, 1, 2])).shape == (3, 1, 768)


@pytest.mark.parametrize("tau", [0.1, 0.6, 1.0])
def test_correlation_aware_condition_is_eq12(inputs, tau):
    logits, feats, labels = inputs
    cond = CorrelationAwareCondition(5, 4, prompt_dim=6, temperature=tau)
    out = cond(logits, feats, labels)
    for i in range(3):
        p = softmax_by_hand(logits[i].tolist(), tau)
        expected = [sum(p[j] * float(cond.prompts.detach()[j, d]) for j in range(5)) for d in range(6)]
        assert torch.allclose(out[i, 0], torch.tensor(expected), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Table 7: class-wise (the authors' computation) and the paper's literal p_y e_y
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [0.1, 0.6, 1.0])
def test_class_wise_is_the_authors_p_y_e_y_over_p_y(inputs, tau):
    logits, feats, labels = inputs
    cond = CorrelationAwareCondition(5, 4, prompt_dim=6, mode="class", temperature=tau)
    out = cond(logits, feats, labels)
    prompts = cond.prompts.detach().tolist()
    for i in range(3):
        y = int(labels[i])
        p_y = softmax_by_hand(logits[i].tolist(), tau)[y]
        authors = [(p_y * prompts[y][d]) / p_y for d in range(6)]
        assert torch.allclose(out[i, 0], torch.tensor(authors), atol=1e-6)
    # the value carries nothing of the logits: any other logits give the same condition
    assert torch.equal(cond(logits * -3.0 + 1.0, feats, labels), out)


def test_class_wise_sends_exactly_zero_gradient_to_logits_like_the_literal_expression(inputs):
    logits, feats, labels = inputs
    cond = CorrelationAwareCondition(5, 4, prompt_dim=6, mode="class", temperature=0.6)
    weights = torch.randn(3, 1, 6)
    logits_ours = logits.clone().requires_grad_(True)
    (cond(logits_ours, feats, labels) * weights).sum().backward()
    assert logits_ours.grad is None or torch.count_nonzero(logits_ours.grad) == 0
    assert torch.count_nonzero(cond.prompts.grad[labels]) == 3 * 6
    # The authors' literal (p_y e_y) / p_y in float64: its gradient into the logits vanishes up to
    # rounding, the same (zero) gradient as ours.
    logits_lit = logits.double().clone().requires_grad_(True)
    p = F.softmax(logits_lit / 0.6, dim=1)
    p_y = p[torch.arange(3), labels].unsqueeze(1)
    e_y = cond.prompts.detach().double()[labels]
    ((p_y * e_y / p_y) * weights.double()[:, 0]).sum().backward()
    assert logits_lit.grad.abs().max() < 1e-12


def test_class_weighted_is_the_papers_text_p_y_e_y(inputs):
    logits, feats, labels = inputs
    cond = CorrelationAwareCondition(5, 4, prompt_dim=6, mode="class_weighted", temperature=0.6)
    out = cond(logits, feats, labels)
    for i in range(3):
        p = softmax_by_hand(logits[i].tolist(), 0.6)[int(labels[i])]
        assert torch.allclose(out[i, 0], p * cond.prompts[labels[i]].detach(), atol=1e-6)
    logits = logits.clone().requires_grad_(True)
    cond(logits, feats, labels).pow(2).sum().backward()
    assert logits.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Table 7: instance-wise
# ---------------------------------------------------------------------------------------------

def test_instance_wise_is_normalised_bn_feature_times_w(inputs):
    logits, feats, labels = inputs
    cond = CorrelationAwareCondition(5, 4, prompt_dim=6, mode="instance")
    assert cond.prompts.shape == (4, 6)  # one row per feature dimension, none per identity
    assert [name for name, _ in cond.named_parameters()] == ["prompts"]  # W alone: no bias
    out = cond(logits, feats, labels)
    w = cond.prompts.detach().tolist()
    for i in range(3):
        row = feats[i].tolist()
        norm = math.sqrt(sum(v * v for v in row))
        expected = [sum(row[k] / norm * w[k][d] for k in range(4)) for d in range(6)]
        assert torch.allclose(out[i, 0], torch.tensor(expected), atol=1e-5)
    # the normalisation is part of the condition: rescaling a feature leaves c unchanged
    assert torch.allclose(cond(logits, feats * torch.tensor([[2.0], [0.5], [7.0]]), labels), out, atol=1e-6)


def test_instance_wise_sends_gradient_to_the_features_not_the_logits(inputs):
    logits, feats, labels = inputs
    cond = CorrelationAwareCondition(5, 4, prompt_dim=6, mode="instance")
    logits = logits.clone().requires_grad_(True)
    feats = feats.clone().requires_grad_(True)
    cond(logits, feats, labels).pow(3).sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert logits.grad is None
    assert cond.prompts.grad.abs().sum() > 0


def test_instance_wise_w_at_real_size_is_512_by_768_normal():
    torch.manual_seed(0)
    cond = CorrelationAwareCondition(751, 512, prompt_dim=768, mode="instance")
    w = cond.prompts.detach()
    assert w.shape == (512, 768) and sum(p.numel() for p in cond.parameters()) == 512 * 768
    assert abs(float(w.mean())) < 0.01 and abs(float(w.std()) - 1.0) < 0.01


# ---------------------------------------------------------------------------------------------
# Table 10: transforms on c
# ---------------------------------------------------------------------------------------------

def test_silu_transform(inputs):
    logits, feats, labels = inputs
    torch.manual_seed(3)
    plain = CorrelationAwareCondition(5, 4, prompt_dim=6)
    silu = CorrelationAwareCondition(5, 4, prompt_dim=6, transform="silu")
    silu.prompts.data.copy_(plain.prompts.data)
    raw = plain(logits, feats, labels).detach()
    expected = torch.tensor([[[silu_by_hand(v) for v in raw[i, 0].tolist()]] for i in range(3)])
    assert torch.allclose(silu(logits, feats, labels), expected, atol=1e-6)
    assert [type(m) for m in silu.transform.modules()] == [nn.SiLU]


def test_batchnorm_transform(inputs):
    logits, feats, labels = inputs
    torch.manual_seed(3)
    plain = CorrelationAwareCondition(5, 4, prompt_dim=6)
    bn = CorrelationAwareCondition(5, 4, prompt_dim=6, transform="bn").train()
    bn.prompts.data.copy_(plain.prompts.data)
    assert isinstance(bn.transform, nn.BatchNorm1d) and bn.transform.num_features == 6
    assert torch.equal(bn.transform.weight, torch.ones(6)) and torch.equal(bn.transform.bias, torch.zeros(6))
    out = bn(logits, feats, labels)[:, 0]
    raw = plain(logits, feats, labels)[:, 0]
    torch.testing.assert_close(out, batchnorm_by_hand(raw), atol=1e-4, rtol=1e-4)


def test_condition_net_layers_and_init_at_real_size():
    torch.manual_seed(0)
    net = ConditionNet(768)
    assert [type(m) for m in net] == [nn.BatchNorm1d, nn.SiLU, nn.Linear, nn.BatchNorm1d, nn.SiLU, nn.Linear]
    bn1, _, fc1, bn2, _, fc2 = net
    assert bn1.num_features == 768 and bn2.num_features == 96
    assert fc1.weight.shape == (96, 768) and fc2.weight.shape == (768, 96)  # 768 -> 96 -> 768
    assert fc1.bias is None and fc2.bias is None
    for fc in (fc1, fc2):
        w = fc.weight.detach()
        assert abs(float(w.mean())) < 0.02 and abs(float(w.std()) - 1.0) < 0.02
    for bn in (bn1, bn2):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    expected = 2 * 768 + 768 * 96 + 2 * 96 + 96 * 768
    assert sum(p.numel() for p in net.parameters()) == expected


def test_condition_net_transform_is_the_hand_computed_mlp(inputs):
    logits, feats, labels = inputs
    torch.manual_seed(3)
    plain = CorrelationAwareCondition(5, 4, prompt_dim=16)
    mlp = CorrelationAwareCondition(5, 4, prompt_dim=16, transform="mlp").train()
    mlp.prompts.data.copy_(plain.prompts.data)
    out = mlp(logits, feats, labels)
    assert out.shape == (3, 1, 16)
    w1, w2 = mlp.transform[2].weight.detach(), mlp.transform[5].weight.detach()
    assert w1.shape == (2, 16) and w2.shape == (16, 2)
    x = plain(logits, feats, labels)[:, 0].detach()
    h = F.silu(batchnorm_by_hand(x)) @ w1.t()
    expected = F.silu(batchnorm_by_hand(h)) @ w2.t()
    torch.testing.assert_close(out[:, 0], expected, atol=1e-4, rtol=1e-4)


def test_condition_net_needs_a_width_of_eight():
    with pytest.raises(ValueError, match="at least 8"):
        ConditionNet(6)


# ---------------------------------------------------------------------------------------------
# Which gradient reaches the Re-ID model, through a tiny ClipReID and a tiny denoiser
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_denoiser(tmp_path_factory):
    path = save_tiny_stable_diffusion(str(tmp_path_factory.mktemp("sd") / "tiny"), seed=0)
    denoiser = DiffusionDenoiser(*load_diffusion_components(path)[:3])
    apply_finetune_mode(denoiser.unet, "frozen")
    return denoiser


def diffusion_loss_through(mode, denoiser, transform="none"):
    """L_dif of a tiny denoiser conditioned (``mode``) on a tiny ClipReID's train-mode outputs;
    returns the Re-ID model and the condition after the backward."""
    torch.manual_seed(0)
    model = clip_vit_tiny(num_classes=4, loss="reid", pretrained=False).train()
    cond = CorrelationAwareCondition(4, model.feature_dim, prompt_dim=denoiser.prompt_dim, mode=mode,
                                     transform=transform, temperature=0.6)
    out = model(torch.randn(4, 3, 128, 64))
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    loss = denoiser(images, cond(out.logits, out.f_bn, torch.tensor([0, 1, 2, 3])),
                    generator=torch.Generator().manual_seed(0))
    loss.backward()
    return model, cond


def reid_gradients(model):
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("transform", ["none", "mlp"])
def test_class_wise_trains_the_prompts_and_nothing_of_the_reid_model(tiny_denoiser, transform):
    model, cond = diffusion_loss_through("class", tiny_denoiser, transform)
    grads = reid_gradients(model)
    assert any(name.startswith("backbone.") for name in grads)
    assert any(name.startswith("classifier.") for name in grads) and any(name.startswith("bnneck.") for name in grads)
    for name, grad in grads.items():
        assert grad is None or torch.count_nonzero(grad) == 0, name
    assert cond.prompts.grad is not None and cond.prompts.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["correlation", "class_weighted", "instance"])
def test_other_modes_send_the_diffusion_gradient_into_the_vit(tiny_denoiser, mode):
    model, cond = diffusion_loss_through(mode, tiny_denoiser)
    nonzero = lambda p: p.grad is not None and p.grad.abs().sum() > 0  # noqa: E731
    assert nonzero(model.backbone.transformer.resblocks[0].attn.in_proj_weight)
    assert nonzero(model.bnneck.weight)
    # the instance-wise condition reads the BN feature, not the classifier
    assert nonzero(model.classifier.weight) == (mode != "instance")
    assert nonzero(cond.prompts)


# ---------------------------------------------------------------------------------------------
# Parameter counts (``dcac stats``) and bad options
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, transform, expected", [
    ("class", "none", 751 * 768),
    ("class_weighted", "none", 751 * 768),
    ("instance", "none", 512 * 768),
    ("correlation", "mlp", 751 * 768 + 2 * 768 + 768 * 96 + 2 * 96 + 96 * 768),
    ("correlation", "bn", 751 * 768 + 2 * 768),
])
def test_stats_count_the_condition_of_each_variant(mode, transform, expected, capsys):
    assert main(["stats", "--parameters-only", "--num-classes", "751", "dcac.condition.mode", mode,
                 "dcac.condition.transform", transform]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["id_prompts"]["trainable"] == expected and stats["condition"] == mode


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="correlation"):
        CorrelationAwareCondition(5, 4, mode="corr")
    with pytest.raises(ValueError, match="silu"):
        CorrelationAwareCondition(5, 4, transform="relu")
    with pytest.raises(ValueError, match="positive"):
        CorrelationAwareCondition(5, 4, temperature=0)
