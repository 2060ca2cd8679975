"""FLOPs of the training steps and of inference (paper Table 6), counted on the meta device,
and the FLOP accounting of ``dcac bench train``."""
import json
import re

import pytest
import torch

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


# ----------------------------------------------------------------------------- several settings in one run


def fake_engine_figures(name, amp, device):
    return {"engine": name, "amp": amp, "parameter_devices": [device], "median_step_s": 1.0 if name == "baseline" else 3.0,
            "step_times_s": [1.0], "peak_memory_gb": 1.0, "peak_memory_kind": "process peak RSS"}


@pytest.fixture
def counted_work(monkeypatch):
    """The benchmark's processes, FLOP counts and memory plans replaced by stand-ins that count
    their calls (what is measured and counted once is the point here, not the figures)."""
    from types import SimpleNamespace

    from dcac_plugin.benchmarks import flops, memory_plan, step, train_bench
    from dcac_plugin.benchmarks.memory_plan import MemoryPlan

    work = SimpleNamespace(measured=[], flops=[], plans=[], fail=set())

    def measure(context, kwargs_by_engine):
        results = {}
        for name, kwargs in kwargs_by_engine.items():
            work.measured.append((name, kwargs["amp"], kwargs["latent_cache"]))
            if (name, kwargs["amp"]) in work.fail:
                raise RuntimeError(f"the {name} benchmark process ended (exit code -9) without figures")
            results[name] = fake_engine_figures(name, kwargs["amp"], kwargs["device"])
        return results

    monkeypatch.setattr(train_bench, "measure_one_after_another", measure)
    monkeypatch.setattr(flops, "training_step_flops",
                        lambda cfg, n, b: work.flops.append((cfg.engine, cfg.dcac.diffusion.latent_cache)) or 10**12)
    monkeypatch.setattr(step, "build_training_step", lambda cfg, n, b, device: cfg)
    monkeypatch.setattr(memory_plan, "plan_training_memory",
                        lambda cfg: work.plans.append((cfg.engine, cfg.train.amp, cfg.dcac.diffusion.latent_cache))
                        or MemoryPlan(2**30, {"weights": 2**29}))
    return work


def test_several_settings_measure_each_step_once_and_count_flops_once(counted_work, tmp_path):
    from dcac_plugin.benchmarks.train_bench import Setting, run_train_settings

    settings = [Setting.parse(text) for text in ("fp16:encode", "fp16:cache", "bf16:cache")]
    out = tmp_path / "figures.json"
    figures = run_train_settings(settings, batch_size=4, device="cpu", opts=TINY, num_classes=8,
                                 schedule="sequential", plan=True, json_out=str(out))
    # One after the other, the baseline (no diffusion input) is measured once per precision.
    assert counted_work.measured == [("baseline", "fp16", False), ("dcac", "fp16", False), ("dcac", "fp16", True),
                                     ("baseline", "bf16", True), ("dcac", "bf16", True)]
    # FLOPs depend on neither the precision nor the schedule: once per engine and diffusion input.
    assert sorted(engine for engine, _ in counted_work.flops) == ["baseline", "dcac", "dcac"]
    assert sorted(cache for engine, cache in counted_work.flops if engine == "dcac") == [False, True]
    assert figures["flop_counts"] == 3
    # Memory plans depend on the precision: once per distinct step.
    assert sorted((engine, amp) for engine, amp, _ in counted_work.plans if engine == "baseline") == [
        ("baseline", "bf16"), ("baseline", "fp16")]
    assert sorted(plan for plan in counted_work.plans if plan[0] == "dcac") == [
        ("dcac", "bf16", True), ("dcac", "fp16", False), ("dcac", "fp16", True)]
    assert list(figures["settings"]) == ["fp16:encode", "fp16:cache", "bf16:cache"]
    entry = figures["settings"]["fp16:cache"]
    assert entry["dcac_over_baseline"] == 3.0 and entry["flop_ratio_dcac_over_baseline"] == 1.0
    assert entry["engines"]["dcac"]["planned_peak_gb"] == 1.0
    assert entry["engines"]["dcac"]["planned_at_peak_gb"] == {"weights": 0.5}
    assert "measured_over_planned" not in entry["engines"]["dcac"]  # only against CUDA's allocator
    assert "planned_peak_gb" in figures["plan_unit"]
    assert json.loads(out.read_text()) == figures
    assert not (tmp_path / "figures.json.partial").exists()


def test_in_turns_each_setting_measures_its_own_baseline(counted_work, monkeypatch):
    from dcac_plugin.benchmarks import train_bench

    monkeypatch.setattr(train_bench, "measure_in_turns",
                        lambda context, wanted, steps, warmup: train_bench.measure_one_after_another(context, wanted))
    train_bench.run_train_settings([train_bench.Setting("off", False), train_bench.Setting("off", True)],
                                   device="cpu", opts=TINY, num_classes=8, schedule="turns")
    assert [name for name, _, _ in counted_work.measured] == ["baseline", "dcac"] * 2


def test_a_failing_setting_is_recorded_and_the_others_go_on(counted_work, tmp_path, capsys):
    from dcac_plugin.benchmarks.train_bench import Setting, run_train_settings

    counted_work.fail.add(("dcac", "fp16"))
    figures = run_train_settings([Setting("fp16", False), Setting("bf16", True)], device="cpu", opts=TINY,
                                 num_classes=8, schedule="sequential", json_out=str(tmp_path / "f.json"))
    failed, done = figures["settings"]["fp16:encode"], figures["settings"]["bf16:cache"]
    assert failed == {"amp": "fp16", "latent_cache": False,
                      "error": "the dcac benchmark process ended (exit code -9) without figures"}
    assert set(done["engines"]) == {"baseline", "dcac"} and done["dcac_over_baseline"] == 3.0
    assert "Setting fp16:encode failed: the dcac benchmark process ended" in capsys.readouterr().out


@pytest.mark.parametrize("change,message", [
    ({"parameter_devices": ["cpu"]}, "the dcac step was asked to run on cuda but its weights are on cpu"),
    ({"peak_memory_kind": "process peak RSS"}, "the dcac step on cuda has no CUDA timing or CUDA memory figures"),
    ({"median_cuda_step_s": None}, "the dcac step on cuda has no CUDA timing or CUDA memory figures"),
    ({"amp": "bf16"}, "the dcac step was asked for amp fp16 but ran in bf16"),
], ids=["weights", "memory", "timing", "precision"])
def test_figures_that_are_not_what_they_claim_are_refused(change, message):
    from dcac_plugin.benchmarks.train_bench import Setting, check_ran_as_asked

    good = {"engine": "dcac", "amp": "fp16", "parameter_devices": ["cuda:0"], "median_cuda_step_s": 0.5,
            "peak_memory_kind": "cuda max allocated"}
    check_ran_as_asked({"dcac": good}, torch.device("cuda"), Setting("fp16", True))  # as asked: no error
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(")):
        check_ran_as_asked({"dcac": {**good, **change}}, torch.device("cuda"), Setting("fp16", True))


@pytest.mark.parametrize("argv,error", [
    (["--steps", "0"], "argument --steps: 0 is not a whole number of at least 1"),
    (["--batch-size", "-4"], "argument --batch-size: -4 is not a whole number from 2 (the BNNeck's batch norm"),
    (["--batch-size", "1000000000"], "argument --batch-size: 1000000000 is not a whole number from 2 (the BNNeck's "
                                     "batch norm needs two images in training) to 65536"),
    (["--rank", "0"], "argument --rank: 0 is not a whole number of at least 1"),
    (["--warmup", "-1"], "argument --warmup: -1 is not a whole number of at least 0"),
    (["--steps", "ten"], "argument --steps: 'ten' is not a whole number of at least 1"),
    (["--settings", "fp16:vae"], "argument --settings: 'fp16:vae': use AMP:cache|encode"),
    (["--settings", "fp8:cache"], "argument --settings: 'fp8:cache': use AMP:cache|encode"),
    (["--settings", "fp16:cache", "--amp", "bf16"], "--settings names each setting's precision and latents"),
], ids=["steps-0", "batch-negative", "batch-huge", "rank-0", "warmup-negative", "steps-word", "latents", "amp", "both"])
def test_bench_train_refuses_bad_arguments_in_one_line_before_any_process(argv, error, capsys, monkeypatch):
    import dcac_cli
    from dcac_plugin.benchmarks import train_bench

    monkeypatch.setattr(train_bench, "run_train_settings", lambda *a, **k: pytest.fail("work started"))
    try:
        code = dcac_cli.main(["bench", "train", *argv])
    except SystemExit as done:  # argparse's errors
        code = done.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("dcac: error: " + error), err


@pytest.mark.parametrize("schedule", ["turns", "sequential"])
def test_bench_train_refuses_a_batch_the_device_cannot_hold_before_any_process(schedule, tmp_path, capsys,
                                                                               monkeypatch):
    """Each step's memory is planned (meta device) first; a batch beyond the device's memory is
    refused in one line, before any process builds a real step: in turns both steps at once."""
    import dcac_cli
    from dcac_plugin.benchmarks import train_bench

    for measure in ("measure_in_turns", "measure_one_after_another"):
        monkeypatch.setattr(train_bench, measure, lambda *a, **k: pytest.fail("a benchmark process started"))
    monkeypatch.setattr(train_bench, "memory_capacity", lambda dev: (2**20, "this machine has {gib} GiB available"))
    out = tmp_path / "figures.json"
    code = dcac_cli.main(["bench", "train", "--device", "cpu", "--batch-size", "4", "--schedule", schedule,
                          "--json-out", str(out), "--", *TINY, "dcac.diffusion.image_size", "64"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    if schedule == "turns":
        assert re.match(r"dcac: error: --batch-size 4: the baseline and dcac steps \(off:cache\), held at once in turns, "
                        r"need at least \d+\.\d GiB \+ \d+\.\d GiB = \d+\.\d GiB \(planned on the meta device, as "
                        r"`dcac stats --batch-size 4` plans a step\), and this machine has 0\.0 GiB available\. Use a "
                        r"smaller --batch-size \(the memory grows with it\), --gradient-checkpointing, or --schedule "
                        r"sequential\.$", err), err
    else:
        assert err.startswith("dcac: error: --batch-size 4: the dcac step (off:cache) needs at least "), err
    assert list(tmp_path.iterdir()) == []  # no figures written


def test_bench_train_plans_before_it_measures_and_passes_what_fits(counted_work, monkeypatch):
    from dcac_plugin.benchmarks import train_bench

    order = []
    monkeypatch.setattr(train_bench, "check_steps_fit",
                        lambda plans, *a: order.append(("checked", len(counted_work.plans), len(plans))))
    measure = train_bench.measure_one_after_another
    monkeypatch.setattr(train_bench, "measure_one_after_another",
                        lambda *a: order.append(("measured",)) or measure(*a))
    train_bench.run_train_settings([train_bench.Setting("fp16", True)], device="cpu", opts=TINY, num_classes=8,
                                   schedule="sequential")
    assert order == [("checked", 2, 2), ("measured",)]


def test_on_a_gpu_the_planned_steps_are_set_against_its_memory(monkeypatch):
    """Each step alone (sequential, the GPU default) against the GPU's total memory, named."""
    from types import SimpleNamespace

    from dcac_config.errors import UsageError
    from dcac_plugin.benchmarks import devices, train_bench
    from dcac_plugin.benchmarks.memory_plan import MemoryPlan

    monkeypatch.setattr(devices.torch.cuda, "get_device_properties",
                        lambda dev: SimpleNamespace(total_memory=80 * 2**30, name="NVIDIA A100-SXM4-80GB"))
    cuda = torch.device("cuda", 0)
    setting = train_bench.Setting("fp16", True)
    plans = {("baseline", "fp16", True): MemoryPlan(60 * 2**30, {}), ("dcac", "fp16", True): MemoryPlan(70 * 2**30, {})}
    train_bench.check_steps_fit(plans, [setting], ("baseline", "dcac"), cuda, "sequential", 64)  # each fits alone
    plans[("dcac", "fp16", True)] = MemoryPlan(int(90.25 * 2**30), {})
    with pytest.raises(UsageError) as info:
        train_bench.check_steps_fit(plans, [setting], ("baseline", "dcac"), cuda, "sequential", 64)
    assert str(info.value) == ("--batch-size 64: the dcac step (fp16:cache) needs at least 90.2 GiB (planned on the "
                               "meta device, as `dcac stats --batch-size 64` plans a step), and cuda:0 "
                               "(NVIDIA A100-SXM4-80GB) has 80.0 GiB. Use a smaller --batch-size (the memory grows "
                               "with it) or --gradient-checkpointing.")
