"""``dcac bench train``: step time, peak memory and FLOP accounting of the baseline and dcac engines.

Real-size architectures (CLIP ViT-B/16 Re-ID model; Stable Diffusion v1.5 U-Net with LoRA
and VAE), randomly initialised, so nothing is downloaded. Each engine is measured in a fresh
process, so that one's peak memory does not include the other's. The step is the engines'
own ``forward_backward`` on a synthetic batch: the dcac step draws latents from cached VAE
posteriors (the default), or encodes the diffusion view every step (``latent_cache=False``,
as the reference does). The same step, built on the meta device, is counted for FLOPs, so
each engine's time is set against the work it does (TFLOP/s), and the dcac / baseline time
ratio against the FLOP ratio (the ratio at equal efficiency).
"""
from __future__ import annotations

import multiprocessing
import queue as queue_module
import statistics
import time
from typing import Dict, Optional, Sequence

import torch

from .devices import checked_device, device_name
from .memory import peak_rss_kb
from .step import benchmark_config, build_training_step


def measure_engine(engine_name: str, batch_size: int = 8, steps: int = 5, warmup: int = 2, amp: str = "off",
                   device: str = "cpu", latent_cache: bool = True, num_classes: int = 751, rank: int = 8,
                   gradient_checkpointing: bool = False, opts: Sequence[str] = ()) -> Dict[str, object]:
    """Median step time (s) after ``warmup`` steps and peak memory of one engine; ``opts``
    are KEY VALUE config overrides (e.g. the tiny test architectures)."""
    cfg = benchmark_config(engine_name, amp=amp, rank=rank, gradient_checkpointing=gradient_checkpointing,
                           latent_cache=latent_cache, opts=opts)
    step = build_training_step(cfg, num_classes=num_classes, batch_size=batch_size, device=device)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for index in range(warmup + steps):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        step.run()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
        if index >= warmup:
            times.append(seconds)
        print(f"  {engine_name}: step {index + 1}/{warmup + steps} {seconds:.3f}s"
              f"{' (warm-up)' if index < warmup else ''}", flush=True)
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else peak_rss_kb() * 1024)
    return {"engine": engine_name, "amp": step.engine.amp, "median_step_s": statistics.median(times),
            "step_times_s": times, "peak_memory_gb": round(peak / 2**30, 3),
            "peak_memory_kind": "cuda max allocated" if dev.type == "cuda" else "process peak RSS"}


def _measure_in_child(queue, kwargs) -> None:
    queue.put(measure_engine(**kwargs))


def _result_of(child, queue, name: str) -> Dict[str, object]:
    """The child's figures; an error if it ends without them (killed for memory, a crash: its
    traceback, if any, is above), instead of waiting for them for ever."""
    while child.is_alive():
        try:
            return queue.get(timeout=2.0)
        except queue_module.Empty:
            pass
    try:  # it may have put its figures just before it ended
        return queue.get(timeout=5.0)
    except queue_module.Empty:
        raise RuntimeError(f"the {name} benchmark process ended (exit code {child.exitcode}) "
                           "without figures; see its output above") from None


def account_flops(results: Dict[str, Dict[str, object]], step_flops: Dict[str, int]) -> Dict[str, object]:
    """Set each engine's median step time against its counted FLOPs.

    Adds ``step_tflops`` (forward, backward and optimizer step, as counted on the meta
    device) and ``achieved_tflops_per_s`` to each engine's figures in ``results``; returns
    the summary figures: ``flop_ratio_dcac_over_baseline``, what the time ratio would be if
    both steps ran at the same TFLOP/s, and ``time_ratio_over_flop_ratio``, the measured
    time ratio divided by it (above 1: dcac's work runs less efficiently than the baseline's).
    """
    for name, figures in results.items():
        flops = step_flops[name]
        figures["step_tflops"] = round(flops / 1e12, 4)
        figures["achieved_tflops_per_s"] = round(flops / 1e12 / float(figures["median_step_s"]), 4)
    if "baseline" not in results or "dcac" not in results:
        return {}
    flop_ratio = step_flops["dcac"] / step_flops["baseline"]
    time_ratio = float(results["dcac"]["median_step_s"]) / float(results["baseline"]["median_step_s"])
    return {"flop_ratio_dcac_over_baseline": round(flop_ratio, 3),
            "time_ratio_over_flop_ratio": round(time_ratio / flop_ratio, 3)}


def run_train_benchmark(batch_size: int = 8, steps: int = 5, warmup: int = 2, amp: str = "off",
                        device: Optional[str] = None, latent_cache: bool = True, rank: int = 8,
                        gradient_checkpointing: bool = False,
                        engines: Sequence[str] = ("baseline", "dcac"), opts: Sequence[str] = (),
                        num_classes: int = 751) -> Dict[str, object]:
    """Both engines, each in a fresh process; returns times, their ratio, peak memory and the
    FLOP accounting (:func:`account_flops`)."""
    from .flops import training_step_flops

    dev = checked_device(device)
    device = str(dev)
    for name in engines:  # a wrong override fails here, in one line, not in a child process
        benchmark_config(name, amp=amp, rank=rank, gradient_checkpointing=gradient_checkpointing,
                         latent_cache=latent_cache, opts=opts)
    context = multiprocessing.get_context("spawn")
    results = {}
    for name in engines:
        print(f"Measuring {name} (batch {batch_size}, amp {amp}, {device}) ...", flush=True)
        queue = context.Queue()
        kwargs = dict(engine_name=name, batch_size=batch_size, steps=steps, warmup=warmup, amp=amp, device=device,
                      latent_cache=latent_cache, num_classes=num_classes, rank=rank,
                      gradient_checkpointing=gradient_checkpointing, opts=list(opts))
        child = context.Process(target=_measure_in_child, args=(queue, kwargs))
        child.start()
        results[name] = _result_of(child, queue, name)
        child.join()
    print("Counting the FLOPs of each step (meta device) ...", flush=True)
    step_flops = {name: training_step_flops(benchmark_config(name, amp=amp, rank=rank,
                                                             gradient_checkpointing=gradient_checkpointing,
                                                             latent_cache=latent_cache, opts=opts),
                                            num_classes, batch_size)
                  for name in engines}
    accounting = account_flops(results, step_flops)
    summary: Dict[str, object] = {
        "device": device_name(dev),
        "batch_size": batch_size, "amp": amp, "latent_cache": latent_cache, "lora_rank": rank,
        "gradient_checkpointing": gradient_checkpointing, "opts": list(opts), "engines": results,
    }
    if "baseline" in results and "dcac" in results:
        summary["dcac_over_baseline"] = round(results["dcac"]["median_step_s"] / results["baseline"]["median_step_s"], 3)
    summary.update(accounting)
    return summary
