import math

import pytest
import torch
import torch.nn.functional as F

from dcac_plugin.conditioning import CorrelationAwareCondition


def softmax_by_hand(row, tau):
    exps = [math.exp(v / tau) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


@pytest.fixture
def inputs():
    torch.manual_seed(0)
    return torch.randn(3, 5), torch.randn(3, 4), torch.tensor([0, 4, 2])  # logits, features, labels


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


def test_class_wise_keeps_only_true_identity(inputs):
    logits, feats, labels = inputs
    cond = CorrelationAwareCondition(5, 4, prompt_dim=6, mode="class", temperature=0.6)
    out = cond(logits, feats, labels)
    for i in range(3):
        p = softmax_by_hand(logits[i].tolist(), 0.6)[int(labels[i])]
        assert torch.allclose(out[i, 0], p * cond.prompts[labels[i]].detach(), atol=1e-6)


def test_instance_wise_maps_the_feature(inputs):
    logits, feats, labels = inputs
    cond = CorrelationAwareCondition(5, 4, prompt_dim=6, mode="instance")
    assert not hasattr(cond, "prompts")
    out = cond(logits, feats, labels)
    w, b = cond.projection.weight.detach(), cond.projection.bias.detach()
    for i in range(3):
        expected = [sum(float(feats[i, k]) * float(w[d, k]) for k in range(4)) + float(b[d]) for d in range(6)]
        assert torch.allclose(out[i, 0], torch.tensor(expected), atol=1e-5)


def test_transforms_of_table10(inputs):
    logits, feats, labels = inputs
    torch.manual_seed(3)
    plain = CorrelationAwareCondition(5, 4, prompt_dim=6)
    silu = CorrelationAwareCondition(5, 4, prompt_dim=6, transform="silu")
    silu.prompts.data.copy_(plain.prompts.data)
    torch.testing.assert_close(silu(logits, feats, labels), F.silu(plain(logits, feats, labels)))
    bn = CorrelationAwareCondition(5, 4, prompt_dim=6, transform="bn").train()
    bn.prompts.data.copy_(plain.prompts.data)
    out = bn(logits, feats, labels)[:, 0]
    torch.testing.assert_close(out.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    raw = plain(logits, feats, labels)[:, 0]
    torch.testing.assert_close(out, (raw - raw.mean(0)) / torch.sqrt(raw.var(0, unbiased=False) + 1e-5), atol=1e-4,
                               rtol=1e-4)
    mlp = CorrelationAwareCondition(5, 4, prompt_dim=6, transform="mlp").train()
    names = [type(m).__name__ for m in mlp.transform]
    assert names == ["Linear", "BatchNorm1d", "SiLU", "Linear"]
    assert mlp(logits, feats, labels).shape == (3, 1, 6)


def test_nothing_is_detached(inputs):
    logits, feats, labels = inputs
    logits = logits.clone().requires_grad_(True)
    cond = CorrelationAwareCondition(5, 4, prompt_dim=6)
    cond(logits, feats, labels).pow(2).sum().backward()
    assert logits.grad.abs().sum() > 0 and cond.prompts.grad.abs().sum() > 0


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="correlation"):
        CorrelationAwareCondition(5, 4, mode="corr")
    with pytest.raises(ValueError, match="silu"):
        CorrelationAwareCondition(5, 4, transform="relu")
    with pytest.raises(ValueError, match="positive"):
        CorrelationAwareCondition(5, 4, temperature=0)
