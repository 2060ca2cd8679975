"""FLOPs of the training steps and of inference (paper Table 6), counted on the meta device,
and the FLOP accounting of ``dcac bench train``."""
import pytest

from dcac_plugin.benchmarks.flops import count_flops, flops_report, forward_flop_counts, training_step_flops
from dcac_plugin.benchmarks.step import benchmark_config, build_training_step
from dcac_plugin.benchmarks.train_bench import account_flops, measure_engine

# The tiny test architectures (2-layer ViT, two-level U-Net), at a small Re-ID view.
TINY = ["model.name", "clip_vit_tiny", "dcac.diffusion.pretrained", "tiny", "data.height", "128", "data.width", "64"]


def meta_step(engine, batch_size, latent_cache=True, opts=(), **options):
    cfg = benchmark_config(engine, latent_cache=latent_cache, opts=list(opts), **options)
    return build_training_step(cfg, num_classes=751 if not opts else 8, batch_size=batch_size, device="meta")


@pytest.fixture(scope="module")
def real_size_64():
    """The three real-size steps at the paper's batch of 64 and their forward counts."""
    steps = {"baseline": meta_step("baseline", 64), "dcac_vae": meta_step("dcac", 64, latent_cache=False),
             "dcac_cache": meta_step("dcac", 64, latent_cache=True)}
    return steps, forward_flop_counts(steps)


def test_components_at_batch_64_are_the_measured_ones(real_size_64):
    """ViT-B/16 at 256x128, SD1.5 U-Net at 16x16 latents (without its LoRA adapters), VAE
    encoder at 128x128: the figures whose sums are Table 6's TFLOPs column."""
    steps, counts = real_size_64
    with_vae = counts["dcac_vae"]
    vit = with_vae.module("ClipReID.backbone")
    unet = with_vae.module("DiffusionFeedback.denoiser.unet")
    lora = with_vae.lora("DiffusionFeedback.denoiser.unet")
    vae = with_vae.module("DiffusionFeedback.denoiser.vae")
    assert round(vit / 1e12, 3) == 1.451
    assert round((unet - lora) / 1e12, 3) == 2.734
    assert 0 < lora < 0.01 * unet  # rank-8 adapters on the attention and GEGLU projections
    assert round(vae / 1e12, 3) == 4.338
    # The baseline step is the ViT plus the classifier and the PCL loss (a few GFLOPs).
    assert 0 < counts["baseline"].total - vit < 1e10


def test_cached_dcac_step_is_the_vae_every_step_one_minus_the_vae_encoder(real_size_64):
    _, counts = real_size_64
    with_vae, cached = counts["dcac_vae"], counts["dcac_cache"]
    assert with_vae.module("DiffusionFeedback.denoiser.vae") > 0
    assert cached.module("DiffusionFeedback.denoiser.vae") == 0
    assert cached.total == with_vae.total - with_vae.module("DiffusionFeedback.denoiser.vae")


def test_forward_flops_report_reproduces_table6(real_size_64):
    steps, counts = real_size_64
    report = flops_report(counts, steps, 64)
    components = report["components"]
    # Table 6: baseline 1.46, DCAC 8.52 (LoRA) / 8.50 (frozen U-Net), inference 1.46.
    assert report["training_baseline"] == pytest.approx(1.46, abs=0.01)
    assert report["inference"] == pytest.approx(1.46, abs=0.01)
    assert components["vit"] + components["unet"] - components["unet_lora_adapters"] + components["vae_encoder"] \
        == pytest.approx(8.52, abs=0.005)
    assert report["training_dcac_vae_every_step"] == pytest.approx(8.52, abs=0.025)
    assert report["training_dcac_latent_cache"] == pytest.approx(
        report["training_dcac_vae_every_step"] - components["vae_encoder"], abs=0.002)


def test_inference_counts_the_encoder_only(real_size_64):
    steps, counts = real_size_64
    assert counts["inference"].total == counts["baseline"].module("ClipReID.backbone")
    assert steps["baseline"].model.training  # back in train mode


def test_counts_scale_linearly_with_batch(real_size_64):
    """Every counted product is linear in the batch: ViT, classifier, PCL loss, condition,
    VAE encoder and U-Net (the dcac step with the VAE has them all)."""
    _, counts = real_size_64
    eight = meta_step("dcac", 8, latent_cache=False)
    forward_eight = count_flops(eight, eight.forward)
    assert counts["dcac_vae"].total == 8 * forward_eight.total
    for module in ("ClipReID.backbone", "DiffusionFeedback.denoiser.unet", "DiffusionFeedback.denoiser.vae"):
        assert counts["dcac_vae"].module(module) == 8 * forward_eight.module(module)


def test_step_flop_ratio_is_the_bound_the_issue_estimates(real_size_64):
    """Whole step: 3x the ViT forward for the baseline; dcac (latent cache) adds the U-Net
    forward and its backward to the condition and adapters only (frozen weights): about 2.26."""
    steps, _ = real_size_64
    baseline = count_flops(steps["baseline"], steps["baseline"].run).total
    dcac = count_flops(steps["dcac_cache"], steps["dcac_cache"].run).total
    assert baseline == pytest.approx(3 * 1.451e12, rel=0.002)
    assert dcac / baseline == pytest.approx(2.26, abs=0.01)


@pytest.mark.parametrize("engine", ["baseline", "dcac"])
def test_symbolic_step_counts_what_the_engines_forward_backward_computes(engine):
    """The meta step runs forward_backward's sequence without its host-side checks: the same
    FLOPs as the engine's own forward_backward on real tensors."""
    cfg = benchmark_config(engine, latent_cache=False, opts=TINY)
    real = build_training_step(cfg, num_classes=8, batch_size=4, device="cpu")
    assert not real.symbolic
    real_flops = count_flops(real, real.run).total
    assert real_flops > 0
    assert training_step_flops(cfg, 8, 4) == real_flops


def test_checkpointing_recomputes_the_forward_in_the_count():
    plain = training_step_flops(benchmark_config("baseline", opts=TINY), 8, 4)
    checkpointed = training_step_flops(benchmark_config("baseline", gradient_checkpointing=True, opts=TINY), 8, 4)
    assert plain < checkpointed < 1.5 * plain


def test_account_flops_sets_time_against_work():
    results = {"baseline": {"median_step_s": 2.0}, "dcac": {"median_step_s": 9.0}}
    summary = account_flops(results, {"baseline": 4_000_000_000_000, "dcac": 9_000_000_000_000})
    assert results["baseline"]["step_tflops"] == 4.0 and results["baseline"]["achieved_tflops_per_s"] == 2.0
    assert results["dcac"]["step_tflops"] == 9.0 and results["dcac"]["achieved_tflops_per_s"] == 1.0
    assert summary == {"flop_ratio_dcac_over_baseline": 2.25, "time_ratio_over_flop_ratio": 2.0}
    assert account_flops({"dcac": {"median_step_s": 1.0}}, {"dcac": 10**12}) == {}


def test_measure_engine_runs_the_built_step(capsys):
    figures = measure_engine("baseline", batch_size=4, steps=1, warmup=0, num_classes=8, opts=TINY)
    assert figures["engine"] == "baseline" and figures["amp"] == "off"
    assert len(figures["step_times_s"]) == 1 and figures["median_step_s"] > 0
    assert "baseline: step 1/1" in capsys.readouterr().out


def _put_and_exit(queue):
    queue.put({"engine": "baseline"})


def test_a_benchmark_process_that_dies_is_an_error_not_a_wait():
    import multiprocessing
    import os

    from dcac_plugin.benchmarks.train_bench import _result_of

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=os._exit, args=(3,))  # dies without figures, as when killed for memory
    child.start()
    with pytest.raises(RuntimeError, match=r"the dcac benchmark process ended \(exit code 3\) without figures"):
        _result_of(child, queue, "dcac")
    child = context.Process(target=_put_and_exit, args=(queue,))
    child.start()
    child.join()  # figures put just before the end are still read
    assert _result_of(child, queue, "baseline") == {"engine": "baseline"}


@pytest.mark.parametrize("schedule", ["turns", "sequential"])
def test_train_benchmark_schedules(schedule, capfd):  # capfd: the sequential children print the steps
    """Both engines in their own processes (the tiny architectures): in turns, one step each,
    or one engine's steps after the other's; the summary sets each dcac step against the
    baseline step before it when they took turns."""
    from dcac_plugin.benchmarks.train_bench import run_train_benchmark

    summary = run_train_benchmark(batch_size=4, steps=2, warmup=1, device="cpu", opts=TINY, num_classes=8,
                                  schedule=schedule)
    lines = [line.strip() for line in capfd.readouterr().out.splitlines() if ": step " in line]
    names = [line.split(":")[0] for line in lines]
    if schedule == "turns":
        assert names == ["baseline", "dcac"] * 3
    else:
        assert names == ["baseline"] * 3 + ["dcac"] * 3
    assert lines[0].endswith("(warm-up)") and not lines[-1].endswith("(warm-up)")
    assert summary["schedule"] == schedule
    baseline, dcac = (summary["engines"][name] for name in ("baseline", "dcac"))
    for figures in (baseline, dcac):
        assert len(figures["step_times_s"]) == 2 and figures["peak_memory_kind"] == "process peak RSS"
        assert figures["median_step_s"] == pytest.approx(sum(figures["step_times_s"]) / 2)
        assert figures["step_tflops"] > 0
    assert summary["dcac_over_baseline"] == round(dcac["median_step_s"] / baseline["median_step_s"], 3)
    per_turn = [round(d / b, 3) for b, d in zip(baseline["step_times_s"], dcac["step_times_s"])]
    assert summary.get("dcac_over_baseline_per_turn") == (per_turn if schedule == "turns" else None)
    median_per_turn = (round((dcac["step_times_s"][0] / baseline["step_times_s"][0]
                              + dcac["step_times_s"][1] / baseline["step_times_s"][1]) / 2, 3)
                       if schedule == "turns" else None)
    assert summary.get("dcac_over_baseline_per_turn_median") == median_per_turn


def test_train_benchmark_rejects_an_unknown_schedule():
    from dcac_plugin.benchmarks.train_bench import run_train_benchmark

    with pytest.raises(ValueError, match="Unknown schedule 'alternate'; choose one of turns, sequential"):
        run_train_benchmark(device="cpu", opts=TINY, schedule="alternate")
