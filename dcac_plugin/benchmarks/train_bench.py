"""``dcac bench train``: step time, peak memory and FLOP accounting of the baseline and dcac engines.

Real-size architectures (CLIP ViT-B/16 Re-ID model; Stable Diffusion v1.5 U-Net with LoRA
and VAE), randomly initialised, so nothing is downloaded. Each engine is measured in a fresh
process, so that one's peak memory does not include the other's; on the CPU the two processes
take their steps in turns, so that both see the same changes in a shared host's load. The
step is the engines' own ``forward_backward`` on a synthetic batch: the dcac step draws latents from cached VAE
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
from typing import Dict, List, Optional, Sequence

import torch

from .devices import checked_device, device_name
from .memory import peak_rss_kb
from .step import benchmark_config, build_training_step

# How the engines' processes take their steps: in turns, or one engine's steps after the other's.
SCHEDULES = ("turns", "sequential")


def schedule_description(schedule: str) -> str:
    return "in turns, one step each" if schedule == "turns" else "one after the other"


class StepTimer:
    """One engine's training step, built from the benchmark config, timed one step at a time."""

    def __init__(self, engine_name: str, batch_size: int = 8, amp: str = "off", device: str = "cpu",
                 latent_cache: bool = True, num_classes: int = 751, rank: int = 8,
                 gradient_checkpointing: bool = False, opts: Sequence[str] = ()) -> None:
        cfg = benchmark_config(engine_name, amp=amp, rank=rank, gradient_checkpointing=gradient_checkpointing,
                               latent_cache=latent_cache, opts=opts)
        self.name = engine_name
        self.step = build_training_step(cfg, num_classes=num_classes, batch_size=batch_size, device=device)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def timed_step(self) -> float:
        """Seconds of one ``forward_backward`` (the GPU's queue drained before and after)."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        self.step.run()
        if cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def figures(self) -> Dict[str, object]:
        """The precision the engine ran in and its peak memory so far."""
        cuda = self.device.type == "cuda"
        peak = torch.cuda.max_memory_allocated(self.device) if cuda else peak_rss_kb() * 1024
        return {"engine": self.name, "amp": self.step.engine.amp, "peak_memory_gb": round(peak / 2**30, 3),
                "peak_memory_kind": "cuda max allocated" if cuda else "process peak RSS"}


def _step_line(name: str, index: int, total: int, warmup: int, seconds: float) -> str:
    return f"  {name}: step {index + 1}/{total} {seconds:.3f}s{' (warm-up)' if index < warmup else ''}"


def _with_times(figures: Dict[str, object], times: List[float]) -> Dict[str, object]:
    return {**figures, "median_step_s": statistics.median(times), "step_times_s": times}


def measure_engine(engine_name: str, batch_size: int = 8, steps: int = 5, warmup: int = 2, amp: str = "off",
                   device: str = "cpu", latent_cache: bool = True, num_classes: int = 751, rank: int = 8,
                   gradient_checkpointing: bool = False, opts: Sequence[str] = ()) -> Dict[str, object]:
    """Median step time (s) after ``warmup`` steps and peak memory of one engine; ``opts``
    are KEY VALUE config overrides (e.g. the tiny test architectures)."""
    timer = StepTimer(engine_name, batch_size, amp, device, latent_cache, num_classes, rank,
                      gradient_checkpointing, opts)
    times = []
    for index in range(warmup + steps):
        seconds = timer.timed_step()
        if index >= warmup:
            times.append(seconds)
        print(_step_line(engine_name, index, warmup + steps, warmup, seconds), flush=True)
    return _with_times(timer.figures(), times)


def _measure_in_child(queue, kwargs) -> None:
    queue.put(measure_engine(**kwargs))


def _steps_on_request(requests, replies, kwargs) -> None:
    """A child of the in-turns schedule: build the step, say so, then time one step per
    ``"step"`` request; ``"done"`` returns the figures and ends it."""
    timer = StepTimer(**kwargs)
    replies.put("ready")
    while requests.get() == "step":
        replies.put(timer.timed_step())
    replies.put(timer.figures())


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


def measure_one_after_another(context, kwargs_by_engine: Dict[str, Dict[str, object]]) -> Dict[str, Dict[str, object]]:
    """Each engine in its own fresh process, one after the other (all its steps, then the next)."""
    results = {}
    for name, kwargs in kwargs_by_engine.items():
        print(f"Measuring {name} ...", flush=True)
        queue = context.Queue()
        child = context.Process(target=_measure_in_child, args=(queue, kwargs))
        child.start()
        results[name] = _result_of(child, queue, name)
        child.join()
    return results


def measure_in_turns(context, kwargs_by_engine: Dict[str, Dict[str, object]], steps: int,
                     warmup: int) -> Dict[str, Dict[str, object]]:
    """Each engine in its own process, both built first, then taking their steps in turns
    (baseline, dcac, baseline, ...), one process running at a time: a change in the host's
    load between the first engine's steps and the second's would otherwise show in their
    ratio. Both processes are alive together, so the machine must hold both steps' memory."""
    children = {}
    try:
        for name, kwargs in kwargs_by_engine.items():
            print(f"Building {name} ...", flush=True)
            requests, replies = context.Queue(), context.Queue()
            child = context.Process(target=_steps_on_request, args=(requests, replies, kwargs))
            child.start()
            children[name] = (child, requests, replies)
            if _result_of(child, replies, name) != "ready":
                raise RuntimeError(f"the {name} benchmark process did not start as expected")
        print(f"Measuring {', '.join(children)} in turns ...", flush=True)
        times: Dict[str, List[float]] = {name: [] for name in children}
        for index in range(warmup + steps):
            for name, (child, requests, replies) in children.items():
                requests.put("step")
                seconds = float(_result_of(child, replies, name))
                if index >= warmup:
                    times[name].append(seconds)
                print(_step_line(name, index, warmup + steps, warmup, seconds), flush=True)
        results = {}
        for name, (child, requests, replies) in children.items():
            requests.put("done")
            results[name] = _with_times(_result_of(child, replies, name), times[name])
            child.join()
        return results
    finally:
        for child, _, _ in children.values():
            if child.is_alive():  # an error above: do not leave a real-size model behind
                child.kill()
                child.join()


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
                        num_classes: int = 751, schedule: Optional[str] = None) -> Dict[str, object]:
    """The engines, each in its own process, ``schedule`` ``"turns"`` (:func:`measure_in_turns`,
    the default on the CPU) or ``"sequential"`` (:func:`measure_one_after_another`, the
    default on a GPU, where two steps' memory may not fit together); returns times, their
    ratio, peak memory and the FLOP accounting (:func:`account_flops`)."""
    from .flops import training_step_flops

    dev = checked_device(device)
    device = str(dev)
    schedule = schedule or ("sequential" if dev.type == "cuda" else "turns")
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}.")
    for name in engines:  # a wrong override fails here, in one line, not in a child process
        benchmark_config(name, amp=amp, rank=rank, gradient_checkpointing=gradient_checkpointing,
                         latent_cache=latent_cache, opts=opts)
    context = multiprocessing.get_context("spawn")
    print(f"Batch {batch_size}, amp {amp}, {device}, engines {schedule_description(schedule)}", flush=True)
    kwargs_by_engine = {name: dict(engine_name=name, batch_size=batch_size, amp=amp, device=device,
                                   latent_cache=latent_cache, num_classes=num_classes, rank=rank,
                                   gradient_checkpointing=gradient_checkpointing, opts=list(opts))
                        for name in engines}
    if schedule == "turns":
        results = measure_in_turns(context, kwargs_by_engine, steps, warmup)
    else:
        for kwargs in kwargs_by_engine.values():
            kwargs.update(steps=steps, warmup=warmup)
        results = measure_one_after_another(context, kwargs_by_engine)
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
        "gradient_checkpointing": gradient_checkpointing, "opts": list(opts), "schedule": schedule,
        "engines": results,
    }
    if "baseline" in results and "dcac" in results:
        summary["dcac_over_baseline"] = round(results["dcac"]["median_step_s"] / results["baseline"]["median_step_s"], 3)
        if schedule == "turns":  # each dcac step over the baseline step just before it, and their median
            per_turn = [dcac / baseline
                        for baseline, dcac in zip(results["baseline"]["step_times_s"], results["dcac"]["step_times_s"])]
            summary["dcac_over_baseline_per_turn"] = [round(ratio, 3) for ratio in per_turn]
            summary["dcac_over_baseline_per_turn_median"] = round(statistics.median(per_turn), 3)
    summary.update(accounting)
    return summary
