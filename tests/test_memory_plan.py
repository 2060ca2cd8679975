"""Peak GPU memory planned without a GPU: the live-storage tracker, the CUDA autocast norms,
the planned steps, and ``dcac stats``'s FLOP and memory sections."""
import json

import pytest
import torch
from torch import nn

from dcac_cli import main
from dcac_plugin.benchmarks.autocast_policy import cuda_autocast_norms
from dcac_plugin.benchmarks.memory_plan import LiveStorageTracker, plan_training_memory
from dcac_plugin.benchmarks.step import benchmark_config, build_training_step

FLOAT = 4  # bytes
TINY = ["model.name", "clip_vit_tiny", "dcac.diffusion.pretrained", "tiny", "data.height", "128", "data.width", "64"]


def test_tracker_counts_the_bytes_of_a_linear_chain_by_hand():
    torch.manual_seed(0)
    first, second = nn.Linear(64, 128, bias=False), nn.Linear(128, 32, bias=False)
    optimizer = torch.optim.SGD([*first.parameters(), *second.parameters()], lr=0.1, momentum=0.9)
    batch = torch.randn(16, 64)
    weights = (64 * 128 + 128 * 32) * FLOAT
    tracker = LiveStorageTracker()
    tracker.register([first.weight, second.weight], "weights")
    tracker.register([batch], "batch")
    assert tracker.current == weights + 16 * 64 * FLOAT
    with tracker:
        hidden = first(batch)
        activated = torch.relu(hidden)
        out = second(activated)
        loss = out.sum()
        activations = (16 * 128 + 16 * 128 + 16 * 32 + 1) * FLOAT
        assert tracker.current == weights + 16 * 64 * FLOAT + activations
        loss.backward()
        # The gradients stay (one per weight), the backward pass's temporaries are gone.
        assert tracker.current == weights + 16 * 64 * FLOAT + activations + weights
        optimizer.step()
        # SGD's momentum buffer: one per weight.
        assert tracker.current == weights + 16 * 64 * FLOAT + activations + 2 * weights
        assert tracker.peak >= tracker.current
        del hidden, activated, out, loss
    assert tracker.current == 3 * weights + 16 * 64 * FLOAT
    assert tracker.by_category() == {"weights": weights, "batch": 16 * 64 * FLOAT,
                                     "activations_and_temporaries": 2 * weights}
    # Last step's gradients relabelled, as the planner registers them before a step.
    tracker.register([first.weight.grad, second.weight.grad], "gradients")
    assert tracker.by_category()["gradients"] == weights


def test_tracker_counts_views_once_and_rounds_to_the_allocator_block():
    tracker = LiveStorageTracker(granularity=512)
    with tracker:
        base = torch.zeros(10)  # 40 bytes: one 512-byte block
        views = [base[2:], base.view(2, 5), base[::2]]
        assert tracker.current == 512 and len(views) == 3
        del base, views
    assert tracker.current == 0 and tracker.peak == 512


def test_cuda_autocast_norms_run_layer_and_group_norms_in_float32():
    layer_norm, group_norm = nn.LayerNorm(8), nn.GroupNorm(2, 4)
    half = torch.randn(2, 4, 8).half()
    with torch.autocast("cpu", dtype=torch.float16):
        assert layer_norm(half).dtype == torch.float16  # CPU autocast keeps it
        with cuda_autocast_norms([layer_norm, group_norm]) as hooked:
            assert hooked == 2
            assert layer_norm(half).dtype == torch.float32
            assert group_norm(half).dtype == torch.float32
        assert group_norm(half).dtype == torch.float16  # hooks removed
    with cuda_autocast_norms([layer_norm]):
        assert layer_norm(half.float()).dtype == torch.float32 and layer_norm(half).dtype == torch.float16


def planned(engine, batch_size, opts=(), num_classes=751, **options):
    cfg = benchmark_config(engine, opts=list(opts), **options)
    return plan_training_memory(build_training_step(cfg, num_classes, batch_size, device="meta"))


def test_real_size_baseline_plan_holds_weights_state_and_activations():
    plan = planned("baseline", 8, amp="fp16")
    model = build_training_step(benchmark_config("baseline"), 751, 2, "meta").model
    trained = sum(param.numel() for param in model.parameters() if param.requires_grad)
    at_peak = plan.at_peak
    # fp32 weights, last step's gradients and Adam's two moments of every trained weight.
    assert at_peak["gradients"] == pytest.approx(trained * FLOAT, rel=0.001)
    assert at_peak["optimizer_state"] == pytest.approx(2 * trained * FLOAT, rel=0.001)
    assert at_peak["weights"] > trained * FLOAT
    assert at_peak["activations_and_temporaries"] > 0
    assert plan.peak_bytes == sum(at_peak.values())


def test_plan_grows_with_batch_and_drops_with_checkpointing_and_autocast():
    small, large = planned("baseline", 4, amp="fp16"), planned("baseline", 8, amp="fp16")
    assert small.peak_bytes < large.peak_bytes
    assert small.at_peak["weights"] == large.at_peak["weights"]
    assert planned("baseline", 8, amp="fp16", gradient_checkpointing=True).peak_bytes < large.peak_bytes
    assert planned("baseline", 8, amp="off").peak_bytes > large.peak_bytes


@pytest.mark.parametrize("latent_cache", [True, False])
def test_dcac_plan_grows_with_batch_and_drops_with_checkpointing(latent_cache):
    options = dict(opts=TINY, num_classes=8, amp="fp16", latent_cache=latent_cache)
    small, large = planned("dcac", 2, **options), planned("dcac", 4, **options)
    assert small.peak_bytes < large.peak_bytes
    assert planned("dcac", 4, gradient_checkpointing=True, **options).peak_bytes < large.peak_bytes


def test_stats_prints_flops_and_the_memory_plan(capsys):
    assert main(["stats", "--num-classes", "8", "--batch-size", "4", "--gpu-memory-gb", "0.001", *TINY]) == 0
    stats = json.loads(capsys.readouterr().out)
    flops, memory = stats["flops"], stats["memory"]
    assert flops["batch_size"] == 4 and flops["training_dcac_vae_every_step"] >= flops["training_dcac_latent_cache"]
    assert {"vit", "unet", "vae_encoder", "unet_lora_adapters"} <= set(flops["components"])
    assert (memory["amp"], memory["gradient_checkpointing"], memory["latent_cache"]) == ("fp16", False, True)
    for engine in ("baseline", "dcac"):
        assert memory[engine]["peak_gb"] >= 0 and memory[engine]["fits_gpu"] is False
    assert set(memory["dcac"]["at_peak_gb"]) <= {"weights", "batch", "gradients", "optimizer_state",
                                                  "activations_and_temporaries"}
    assert stats["trainable_total"] > 0  # the parameter counts are still there


def test_stats_parameters_only_skips_the_plan(capsys):
    assert main(["stats", "--num-classes", "8", "--parameters-only", *TINY]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert "flops" not in stats and "memory" not in stats and stats["num_classes"] == 8


@pytest.mark.parametrize("argv, expected", [
    (["--batch-size", "1"], "argument --batch-size: 1 is not a whole number from 2 (the BNNeck's batch norm"),
    (["--batch-size", "1000000000"], "argument --batch-size: 1000000000 is not a whole number from 2 "),
    (["--num-classes", "0"], "argument --num-classes: 0 is not a whole number of training identities from 1 to "
                             "1000000"),
    (["--num-classes", "-5"], "argument --num-classes: -5 is not a whole number of training identities"),
    (["--num-classes", "1000000000"], "argument --num-classes: 1000000000 is not a whole number of training"),
    (["--gpu-memory-gb", "0"], "argument --gpu-memory-gb: 0 is not a number of GB above 0 and at most 100000"),
    (["--gpu-memory-gb", "nan"], "argument --gpu-memory-gb: nan is not a number of GB above 0"),
    (["--gpu-memory-gb", "inf"], "argument --gpu-memory-gb: inf is not a number of GB above 0"),
    (["--amp", "auto"], "argument --amp: invalid choice: 'auto'"),
], ids=["batch-1", "batch-huge", "classes-0", "classes-negative", "classes-huge", "gpu-0", "gpu-nan", "gpu-inf",
        "amp"])
def test_stats_refuses_bad_plan_options_before_any_work(argv, expected, capsys, monkeypatch):
    from dcac_plugin.benchmarks import stats

    monkeypatch.setattr(stats, "parameter_stats", lambda *a, **k: pytest.fail("work started"))
    try:
        code = main(["stats", *argv])
    except SystemExit as done:  # argparse's errors
        code = done.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dcac: error: " + expected) and "Traceback" not in err


def test_a_symbolic_step_of_a_huge_batch_builds_nothing_per_image():
    """``dcac stats --batch-size 1000000000`` grew to 21 GB before it was killed: the symbolic
    step's tensors hold no memory, but its batch named every image in a Python list (at 10^7
    images that list alone took 0.7 GB)."""
    import tracemalloc

    cfg = benchmark_config("dcac", opts=TINY)
    peaks = {}
    for batch_size in (4, 10**7):
        tracemalloc.start()
        try:
            step = build_training_step(cfg, 8, batch_size, device="meta")
            peaks[batch_size] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert len(step.data["impath"]) == 10**7 and step.data["impath"][-1] == "img9999999"
    assert tuple(step.data["img"].shape) == (10**7, 3, 128, 64)
    assert peaks[10**7] - peaks[4] < 8 * 2**20, f"{(peaks[10**7] - peaks[4]) / 2**20:.0f} MiB more for 10^7 images"
