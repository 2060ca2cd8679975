"""One training step of the tiny baseline and dcac engines on every device this machine has, in
each precision that device trains in: the CPU everywhere, and CUDA where a GPU is present
(``scripts/device_check.sh`` runs these with ``pytest -k cuda`` on the lent GPU machine).

The step is the one ``dcac bench train`` times (:func:`build_training_step`: the engine the
launcher builds, a synthetic PK batch), on the tiny architectures. On a GPU the baseline's fp32
step is also set against the same step on the CPU, from the same weights and batch.
"""
import math

import pytest
import torch

from dcac_plugin.benchmarks.step import benchmark_config, build_training_step

TINY = ["model.name", "clip_vit_tiny", "dcac.diffusion.pretrained", "tiny", "data.height", "128", "data.width", "64"]
NUM_CLASSES = 8
BATCH = 8
# The precisions each device trains in (train.amp): fp16 needs a GPU's gradient scaler.
PRECISIONS = {"cpu": ("off", "bf16"), "cuda": ("off", "fp16", "bf16")}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CASES = [(device, amp) for device in DEVICES for amp in PRECISIONS[device]]


def tiny_step(engine: str, amp: str, device: str):
    return build_training_step(benchmark_config(engine, amp=amp, opts=TINY), num_classes=NUM_CLASSES,
                               batch_size=BATCH, device=device)


def trained_parameters(step) -> dict:
    return {f"{index}.{name}": param for index, module in enumerate(step.modules())
            for name, param in module.named_parameters() if param.requires_grad}


@pytest.mark.parametrize("engine_name", ["baseline", "dcac"])
@pytest.mark.parametrize("device,amp", CASES)
def test_a_training_step_on_the_device_trains_there_in_the_precision_asked(engine_name, device, amp):
    step = tiny_step(engine_name, amp, device)
    engine = step.engine
    assert engine.device.type == device and engine.amp == amp
    # fp16 trains with a gradient scaler, bf16 and fp32 without one.
    assert engine.scaler.is_enabled() == (amp == "fp16")
    before = {name: param.detach().clone() for name, param in trained_parameters(step).items()}
    prototypes = engine.memory.prototypes.detach().clone()

    losses = engine.forward_backward(step.data)

    expected_terms = {"loss_id", "loss_pcl"} | ({"loss_dif"} if engine_name == "dcac" else set())
    assert expected_terms <= set(losses), losses
    assert all(math.isfinite(value) for value in losses.values()), losses
    after = trained_parameters(step)
    assert {param.device.type for param in after.values()} == {device}
    assert all(param.dtype == torch.float32 for param in after.values())  # autocast keeps fp32 master weights
    assert all(torch.isfinite(param).all() for param in after.values())
    moved = [name for name, param in after.items() if not torch.equal(param.detach(), before[name])]
    classifier = [name for name in after if "classifier" in name]
    assert classifier and set(classifier) <= set(moved)
    if engine_name == "dcac":
        # The diffusion loss reaches the adapters' B matrices (zero at start) and the ID prompts.
        assert any("lora_B" in name for name in moved) and any("prompt" in name for name in moved)
    # The PCL memory is updated after the step, where the features are.
    assert engine.memory.prototypes.device.type == device
    assert not torch.equal(engine.memory.prototypes, prototypes)


if torch.cuda.is_available():  # a comparison that only a GPU machine can make; not generated elsewhere

    def test_cuda_fp32_baseline_step_matches_the_cpu_step():
        on_cpu, on_cuda = tiny_step("baseline", "off", "cpu"), tiny_step("baseline", "off", "cuda")
        on_cuda.model.load_state_dict(on_cpu.model.state_dict())
        on_cuda.engine.memory.prototypes.copy_(on_cpu.engine.memory.prototypes)
        for key, value in on_cpu.data.items():
            if torch.is_tensor(value):
                on_cuda.data[key] = value.to("cuda")
        cpu_losses = on_cpu.engine.forward_backward(on_cpu.data)
        cuda_losses = on_cuda.engine.forward_backward(on_cuda.data)
        for name, value in cpu_losses.items():
            assert cuda_losses[name] == pytest.approx(value, rel=1e-3, abs=1e-4), name
        for (name, cpu_param), cuda_param in zip(on_cpu.model.named_parameters(), on_cuda.model.parameters()):
            assert torch.allclose(cuda_param.detach().cpu(), cpu_param.detach(), rtol=1e-3, atol=1e-5), name
