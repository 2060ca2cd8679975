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
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from dcac_config.errors import UsageError

from .devices import checked_device, device_name, memory_capacity
from .memory import peak_rss_kb
from .step import benchmark_config, build_training_step

# How the engines' processes take their steps: in turns, or one engine's steps after the other's.
SCHEDULES = ("turns", "sequential")
# What the dcac step's diffusion input is (the second half of a setting, ``fp16:encode``).
LATENT_INPUTS = ("cache", "encode")
# What the memory plan beside the measured peaks counts (see benchmarks.memory_plan).
PLAN_UNIT = ("planned_peak_gb: GiB of live tensors at the step's peak, planned on the meta device as `dcac stats` "
             "does; torch.cuda.max_memory_allocated also counts the cuBLAS/cuDNN workspaces, which PyTorch "
             "allocates through its caching allocator, and max_memory_reserved also the cached free blocks; "
             "the CUDA context is in neither")
# Wall seconds of one step, and the seconds between CUDA events around it (None on the CPU).
StepTime = Tuple[float, Optional[float]]


def schedule_description(schedule: str) -> str:
    return "in turns, one step each" if schedule == "turns" else "one after the other"


@dataclass(frozen=True)
class Setting:
    """What a benchmark step's precision and diffusion input are: ``train.amp`` and whether the
    dcac step draws latents from cached posteriors (``cache``) or encodes its diffusion view
    with the VAE every step (``encode``, as the reference and the paper's Table 6 do)."""

    amp: str = "off"
    latent_cache: bool = True

    @property
    def name(self) -> str:
        return f"{self.amp}:{'cache' if self.latent_cache else 'encode'}"

    @classmethod
    def parse(cls, text: str) -> "Setting":
        """``AMP:cache`` or ``AMP:encode`` (e.g. ``fp16:encode``), as ``--settings`` takes them
        (the command line checks them first; the config checks the precision)."""
        amp, _, latents = text.partition(":")
        if latents not in LATENT_INPUTS:
            raise ValueError(f"setting {text!r}: the part after ':' must be one of {', '.join(LATENT_INPUTS)}")
        return cls(amp, latents == "cache")


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

    def timed_step(self) -> StepTime:
        """One ``forward_backward``: wall seconds with the GPU's queue drained before and after,
        and on a GPU also the seconds between CUDA events recorded around it (the GPU's own
        clock, free of the host's scheduling)."""
        if self.device.type != "cuda":
            start = time.perf_counter()
            self.step.run()
            return time.perf_counter() - start, None
        began, ended = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        began.record()
        self.step.run()
        ended.record()
        torch.cuda.synchronize(self.device)
        return time.perf_counter() - start, began.elapsed_time(ended) / 1000.0

    def figures(self) -> Dict[str, object]:
        """The precision the engine ran in, where its weights are, and its peak memory so far."""
        cuda = self.device.type == "cuda"
        figures: Dict[str, object] = {
            "engine": self.name, "amp": self.step.engine.amp,
            "parameter_devices": sorted({str(param.device) for module in self.step.modules()
                                         for param in module.parameters()}),
        }
        if cuda:
            figures.update(peak_memory_gb=round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3),
                           peak_reserved_gb=round(torch.cuda.max_memory_reserved(self.device) / 2**30, 3),
                           peak_memory_kind="cuda max allocated")
        else:
            figures.update(peak_memory_gb=round(peak_rss_kb() * 1024 / 2**30, 3), peak_memory_kind="process peak RSS")
        return figures


def _step_line(name: str, index: int, total: int, warmup: int, seconds: StepTime) -> str:
    wall, gpu = seconds
    on_gpu = f" (cuda events {gpu:.3f}s)" if gpu is not None else ""
    return f"  {name}: step {index + 1}/{total} {wall:.3f}s{on_gpu}{' (warm-up)' if index < warmup else ''}"


def _with_times(figures: Dict[str, object], times: List[StepTime]) -> Dict[str, object]:
    walls = [wall for wall, _ in times]
    result = {**figures, "median_step_s": statistics.median(walls), "step_times_s": walls}
    gpu = [seconds for _, seconds in times if seconds is not None]
    if gpu:
        result.update(median_cuda_step_s=statistics.median(gpu), cuda_step_times_s=gpu)
    return result


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
                seconds = tuple(_result_of(child, replies, name))
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


def check_ran_as_asked(results: Dict[str, Dict[str, object]], device: torch.device, setting: Setting) -> None:
    """Refuse figures that are not what they claim: on a GPU every engine's weights must be on
    CUDA, its memory read from CUDA's allocator and its precision the one asked for, so that
    a step that fell back to the CPU can never pass as a GPU figure."""
    for name, figures in results.items():
        where = figures.get("parameter_devices") or []
        if device.type == "cuda":
            if not where or any(not str(place).startswith("cuda") for place in where):
                raise RuntimeError(f"the {name} step was asked to run on {device} but its weights are on "
                                   f"{', '.join(map(str, where)) or 'no device'}")
            if figures.get("peak_memory_kind") != "cuda max allocated" or figures.get("median_cuda_step_s") is None:
                raise RuntimeError(f"the {name} step on {device} has no CUDA timing or CUDA memory figures")
        if setting.amp != "auto" and figures.get("amp") != setting.amp:
            raise RuntimeError(f"the {name} step was asked for amp {setting.amp} but ran in {figures.get('amp')}")


def _engine_kwargs(name: str, setting: Setting, common: Dict[str, object]) -> Dict[str, object]:
    return dict(engine_name=name, amp=setting.amp, latent_cache=setting.latent_cache, **common)


def _measure_key(name: str, setting: Setting) -> Tuple[str, str, bool]:
    """What identifies a measurement: the baseline has no diffusion input, so its step is the
    same for ``cache`` and ``encode`` and is measured once per precision."""
    return (name, setting.amp, setting.latent_cache if name == "dcac" else True)


def _flop_key(name: str, setting: Setting) -> Tuple[str, bool]:
    """FLOPs depend on neither the precision nor the schedule: once per engine and diffusion input."""
    return (name, setting.latent_cache if name == "dcac" else True)


def _plan_side_by_side(figures: Dict[str, object], plan) -> None:
    """The planned peak (``dcac stats``: live tensor bytes on the meta device) beside the
    measured one; on a GPU also measured / planned."""
    planned = plan.as_gib()
    figures["planned_peak_gb"] = planned["peak_gb"]
    figures["planned_at_peak_gb"] = planned["at_peak_gb"]
    if figures.get("peak_memory_kind") == "cuda max allocated" and plan.peak_bytes:
        figures["measured_over_planned"] = round(float(figures["peak_memory_gb"]) * 2**30 / plan.peak_bytes, 3)


def _setting_summary(results: Dict[str, Dict[str, object]], schedule: str) -> Dict[str, object]:
    """The ratio of the engines' median steps (wall, and CUDA events where measured); in turns
    also each dcac step over the baseline step just before it, and their median."""
    summary: Dict[str, object] = {}
    if "baseline" not in results or "dcac" not in results:
        return summary
    baseline, dcac = results["baseline"], results["dcac"]
    summary["dcac_over_baseline"] = round(dcac["median_step_s"] / baseline["median_step_s"], 3)
    if "median_cuda_step_s" in baseline and "median_cuda_step_s" in dcac:
        summary["dcac_over_baseline_cuda_events"] = round(dcac["median_cuda_step_s"] / baseline["median_cuda_step_s"], 3)
    if schedule == "turns":
        per_turn = [d / b for b, d in zip(baseline["step_times_s"], dcac["step_times_s"])]
        summary["dcac_over_baseline_per_turn"] = [round(ratio, 3) for ratio in per_turn]
        summary["dcac_over_baseline_per_turn_median"] = round(statistics.median(per_turn), 3)
    return summary


def _write_json(path: Optional[str], figures: Dict[str, object]) -> None:
    """The figures so far, replaced atomically: a run stopped at its time limit keeps them."""
    if not path:
        return
    import json
    import os

    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(figures, handle, indent=2)
        handle.write("\n")
    os.replace(partial, path)


def check_steps_fit(plans: Dict[Tuple[str, str, bool], object], settings: Sequence[Setting],
                    engines: Sequence[str], dev: torch.device, schedule: str, batch_size: int) -> None:
    """Refuse (:class:`UsageError`) a benchmark whose planned steps the device cannot hold: a
    step alone, or in turns both engines' steps at once (their processes live together). The
    plan counts live tensors only, so what it refuses cannot run; what it passes may still
    need more (workspaces, the CUDA context, the Python process)."""
    capacity, where = memory_capacity(dev)
    if capacity is None:
        return
    for setting in settings:
        needed = {name: plans[_measure_key(name, setting)].peak_bytes for name in engines}
        together = schedule == "turns" and len(needed) > 1
        total = sum(needed.values()) if together else max(needed.values())
        if total <= capacity:
            continue
        gib = {name: f"{nbytes / 2**30:.1f} GiB" for name, nbytes in needed.items()}
        what = (f"the {' and '.join(gib)} steps ({setting.name}), held at once in turns, need at least "
                f"{' + '.join(gib.values())} = {total / 2**30:.1f} GiB" if together else
                f"the {max(needed, key=needed.get)} step ({setting.name}) needs at least {total / 2**30:.1f} GiB")
        fixes = ", --gradient-checkpointing, or --schedule sequential" if together else " or --gradient-checkpointing"
        raise UsageError(f"--batch-size {batch_size}: {what} (planned on the meta device, as `dcac stats --batch-size "
                         f"{batch_size}` plans a step), and {where.format(gib=f'{capacity / 2**30:.1f}')}. Use a "
                         f"smaller --batch-size (the memory grows with it){fixes}.")


def run_train_settings(settings: Sequence[Setting], batch_size: int = 8, steps: int = 5, warmup: int = 2,
                       device: Optional[str] = None, rank: int = 8, gradient_checkpointing: bool = False,
                       engines: Sequence[str] = ("baseline", "dcac"), opts: Sequence[str] = (),
                       num_classes: int = 751, schedule: Optional[str] = None, plan: bool = False,
                       json_out: Optional[str] = None) -> Dict[str, object]:
    """Each setting's engines, each in its own process (``schedule`` ``"turns"``,
    :func:`measure_in_turns`, the default on the CPU, or ``"sequential"``,
    :func:`measure_one_after_another`, the default on a GPU, where two steps' memory may not fit
    together): times, their ratio, peak memory, the FLOP accounting (:func:`account_flops`) and,
    with ``plan``, the ``dcac stats`` memory plan of the same step beside the measured peak.

    The baseline step is measured once per precision (it has no diffusion input), FLOPs are
    counted once per engine and diffusion input, and a setting whose measurement fails is
    recorded with its error while the others go on. With ``json_out`` the figures so far are
    written there after every measurement. Returns ``{"settings": {name: summary}, ...}``.
    """
    from .flops import training_step_flops
    from .memory_plan import plan_training_memory
    from .step import build_training_step as build_step

    dev = checked_device(device)
    device = str(dev)
    schedule = schedule or ("sequential" if dev.type == "cuda" else "turns")
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}.")
    configs = {}  # a wrong override fails here, in one line, not in a child process
    for setting in settings:
        for name in engines:
            configs[_measure_key(name, setting)] = benchmark_config(
                name, amp=setting.amp, rank=rank, gradient_checkpointing=gradient_checkpointing,
                latent_cache=setting.latent_cache, opts=opts)
    # Every step's memory is planned (meta device, seconds) before any process builds a real one:
    # a batch the device cannot hold is refused here instead of filling its memory.
    print("Planning the memory of each step (meta device) ...", flush=True)
    plans = {key: plan_training_memory(build_step(cfg, num_classes, batch_size, device="meta"))
             for key, cfg in configs.items()}
    check_steps_fit(plans, settings, engines, dev, schedule, batch_size)
    context = multiprocessing.get_context("spawn")
    common = dict(batch_size=batch_size, device=device, num_classes=num_classes, rank=rank,
                  gradient_checkpointing=gradient_checkpointing, opts=list(opts))
    figures: Dict[str, object] = {
        "device": device_name(dev), "batch_size": batch_size, "lora_rank": rank,
        "gradient_checkpointing": gradient_checkpointing, "opts": list(opts), "schedule": schedule,
        "steps": steps, "warmup": warmup, "settings": {},
    }
    measured: Dict[Tuple[str, str, bool], Dict[str, object]] = {}
    # In turns each dcac step is set against the baseline step just before it, so each
    # setting measures its own baseline; one after the other, a baseline serves every setting
    # of its precision.
    def reused(name: str, setting: Setting) -> Tuple[str, str, bool]:
        return _measure_key(name, setting) if schedule == "sequential" else (name, setting.amp, setting.latent_cache)

    for setting in settings:
        print(f"Batch {batch_size}, amp {setting.amp}, {'latent cache' if setting.latent_cache else 'VAE every step'}, "
              f"{device}, engines {schedule_description(schedule)}", flush=True)
        wanted = {name: _engine_kwargs(name, setting, common) for name in engines
                  if reused(name, setting) not in measured}
        entry: Dict[str, object] = {"amp": setting.amp, "latent_cache": setting.latent_cache}
        try:
            if wanted:
                if schedule == "turns":
                    fresh = measure_in_turns(context, wanted, steps, warmup)
                else:
                    fresh = measure_one_after_another(
                        context, {name: {**kwargs, "steps": steps, "warmup": warmup} for name, kwargs in wanted.items()})
                check_ran_as_asked(fresh, dev, setting)
                measured.update({reused(name, setting): result for name, result in fresh.items()})
            entry["engines"] = {name: dict(measured[reused(name, setting)]) for name in engines}
        except RuntimeError as err:
            entry["error"] = str(err)
            print(f"Setting {setting.name} failed: {err}", flush=True)
        figures["settings"][setting.name] = entry
        _write_json(json_out, figures)
    print("Counting the FLOPs of each step (meta device) ...", flush=True)
    step_flops: Dict[Tuple[str, bool], int] = {}
    for setting in settings:
        entry = figures["settings"][setting.name]
        if "engines" not in entry:
            continue
        for name in engines:
            key = _flop_key(name, setting)
            if key not in step_flops:
                step_flops[key] = training_step_flops(configs[_measure_key(name, setting)], num_classes, batch_size)
            if plan:
                _plan_side_by_side(entry["engines"][name], plans[_measure_key(name, setting)])
        entry.update(_setting_summary(entry["engines"], schedule))
        entry.update(account_flops(entry["engines"], {name: step_flops[_flop_key(name, setting)] for name in engines}))
        _write_json(json_out, figures)
    figures["flop_counts"] = len(step_flops)
    if plan:
        figures["plan_unit"] = PLAN_UNIT
    _write_json(json_out, figures)
    return figures


def run_train_benchmark(batch_size: int = 8, steps: int = 5, warmup: int = 2, amp: str = "off",
                        device: Optional[str] = None, latent_cache: bool = True, rank: int = 8,
                        gradient_checkpointing: bool = False,
                        engines: Sequence[str] = ("baseline", "dcac"), opts: Sequence[str] = (),
                        num_classes: int = 751, schedule: Optional[str] = None, plan: bool = False,
                        json_out: Optional[str] = None) -> Dict[str, object]:
    """One setting (``amp``, ``latent_cache``) of :func:`run_train_settings`, its summary at the
    top level: ``engines``, ``dcac_over_baseline``, the FLOP accounting; an error if it failed."""
    setting = Setting(amp, latent_cache)
    figures = run_train_settings([setting], batch_size, steps, warmup, device, rank, gradient_checkpointing,
                                 engines, opts, num_classes, schedule, plan, json_out)
    entry = figures.pop("settings")[setting.name]
    if "error" in entry:
        raise RuntimeError(entry["error"])
    return {**figures, **entry}
