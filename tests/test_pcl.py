import math

import torch
import torch.nn.functional as F

from dcac_plugin.losses.pcl import PrototypeMemory, hardest_samples


def test_memory_init_equals_normalised_class_means():
    torch.manual_seed(0)
    feats, labels = torch.randn(30, 8), torch.randint(0, 5, (30,))
    labels[:5] = torch.arange(5)
    memory = PrototypeMemory(6, 8)  # identity 5 has no image
    memory.initialize(feats, labels)
    for k in range(5):
        members = [F.normalize(feats[i], dim=0) for i in range(30) if labels[i] == k]
        mean = sum(members) / len(members)
        torch.testing.assert_close(memory.prototypes[k], mean / mean.norm())
    assert torch.equal(memory.prototypes[5], torch.zeros(8))


def test_loss_equals_hand_computation():
    torch.manual_seed(1)
    memory = PrototypeMemory(4, 3, temperature=0.01)
    memory.prototypes.copy_(F.normalize(torch.randn(4, 3), dim=1))
    feats, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 1])
    total = 0.0
    for i in range(5):
        f = [float(v) for v in feats[i]]
        norm = math.sqrt(sum(v * v for v in f))
        sims = [sum(f[d] / norm * float(memory.prototypes[k, d]) for d in range(3)) / 0.01 for k in range(4)]
        top = max(sims)
        log_z = top + math.log(sum(math.exp(s - top) for s in sims))
        total += log_z - sims[int(labels[i])]
    assert abs(float(memory.loss(feats, labels)) - total / 5) < 1e-4


def test_update_picks_lowest_cosine_sample_and_applies_momentum():
    memory = PrototypeMemory(3, 2, momentum=0.2)
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    memory.prototypes.copy_(protos)
    # identity 0: cosines 1.0, 0.8, -0.6 (the last is hardest); identity 1: one sample
    feats = torch.tensor([[2.0, 0.0], [0.8, 0.6], [-0.6, 0.8], [3.0, 4.0]])
    labels = torch.tensor([0, 0, 0, 1])
    ids, hard = hardest_samples(feats, memory.prototypes, labels)
    assert ids.tolist() == [0, 1]
    torch.testing.assert_close(hard[0], torch.tensor([-0.6, 0.8]))
    memory.update(feats, labels)
    expected0 = F.normalize(0.2 * protos[0] + 0.8 * torch.tensor([-0.6, 0.8]), dim=0)
    expected1 = F.normalize(0.2 * protos[1] + 0.8 * torch.tensor([0.6, 0.8]), dim=0)
    torch.testing.assert_close(memory.prototypes[0], expected0)
    torch.testing.assert_close(memory.prototypes[1], expected1)
    assert torch.equal(memory.prototypes[2], protos[2])  # not in the batch: untouched
    torch.testing.assert_close(memory.prototypes.norm(dim=1), torch.ones(3))


def test_loss_uses_memory_before_update_and_gradients_reach_features():
    memory = PrototypeMemory(2, 2)
    memory.prototypes.copy_(torch.eye(2))
    feats = torch.tensor([[1.0, 0.5], [0.2, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 1])
    loss = memory.loss(feats, labels)
    loss.backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert memory.prototypes.grad is None
