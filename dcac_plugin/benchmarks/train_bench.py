"""``dcac bench train``: step time and peak memory of the baseline and dcac engines.

Real-size architectures (CLIP ViT-B/16 Re-ID model; Stable Diffusion v1.5 U-Net with LoRA
and VAE), randomly initialised, so nothing is downloaded. Each engine is measured in a fresh
process, so that one's peak memory does not include the other's. The step is the engines'
own ``forward_backward`` on a synthetic batch: the dcac step draws latents from cached VAE
posteriors (the default), or encodes the diffusion view every step (``latent_cache=False``,
as the reference does).
"""
from __future__ import annotations

import multiprocessing
import statistics
import time
from types import SimpleNamespace
from typing import Dict, Optional, Sequence

import torch

from ..errors import UsageError
from .memory import peak_rss_kb

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


class FixedPosteriors:
    """Stands in for the latent cache of a benchmark batch: the same posteriors every step."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean, self.std = mean, std

    def lookup(self, paths, device=None):
        return self.mean.to(device), self.std.to(device)


def measure_engine(engine_name: str, batch_size: int = 8, steps: int = 5, warmup: int = 2, amp: str = "off",
                   device: str = "cpu", latent_cache: bool = True, num_classes: int = 751, rank: int = 8,
                   gradient_checkpointing: bool = False) -> Dict[str, object]:
    """Median step time (s) after ``warmup`` steps and peak memory of one engine."""
    import dcac_plugin  # noqa: F401  (registration)
    from ..config import build_config
    from ..diffusion import build_diffusion_architecture, load_diffusion_configs
    from ..engines import BaselineEngine, DCACEngine
    from ..engines.dcac import build_diffusion_feedback
    from ..launcher import apply_speed_options, build_model
    from ..optim import build_optimizer

    torch.manual_seed(0)
    dev = torch.device(device)
    cfg = build_config(None, ["engine", engine_name, "model.pretrained", "False", "train.amp", amp,
                              "dcac.lora.rank", str(rank), "train.gradient_checkpointing", str(gradient_checkpointing)])
    model = build_model(cfg, num_classes, "reid", use_gpu=dev.type == "cuda").to(dev)
    feedback = None
    if engine_name == "dcac":
        # Real-size SD1.5 architecture, randomly initialised: nothing to download.
        components = build_diffusion_architecture(load_diffusion_configs(SD15), device=dev)
        feedback = build_diffusion_feedback(cfg, num_classes, model.feature_dim, components).to(dev)
    apply_speed_options(cfg, model, feedback)
    trained = torch.nn.ModuleDict({"model": model, **({"auxiliary": feedback} if feedback is not None else {})})
    optimizer = build_optimizer(cfg, trained)
    manager = SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=num_classes, sources=[])
    common = dict(use_gpu=dev.type == "cuda", amp=amp)
    if engine_name == "dcac":
        engine = DCACEngine(manager, model, optimizer, feedback=feedback, **common)
    else:
        engine = BaselineEngine(manager, model, optimizer, **common)

    ids = torch.arange(batch_size) // 4  # PK batches: 4 images per identity
    reid_view = torch.randn(batch_size, 3, cfg.data.height, cfg.data.width, device=dev)
    diffusion_view = torch.rand(batch_size, 3, cfg.dcac.diffusion.image_size, cfg.dcac.diffusion.image_size,
                                device=dev) * 2 - 1
    data = {"img": reid_view, "pid": ids.to(dev), "impath": [f"img{i}" for i in range(batch_size)]}
    if engine_name == "dcac":
        if latent_cache:
            from ..diffusion import posterior_parameters

            engine.latent_cache = FixedPosteriors(*posterior_parameters(feedback.denoiser.vae, diffusion_view))
        else:
            data["img"] = [reid_view, diffusion_view]
    engine.memory.prototypes.copy_(torch.nn.functional.normalize(torch.randn_like(engine.memory.prototypes), dim=1))
    model.train()
    if feedback is not None:
        feedback.train()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for step in range(warmup + steps):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        engine.forward_backward(data)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if step >= warmup:
            times.append(time.perf_counter() - start)
        print(f"  {engine_name}: step {step + 1}/{warmup + steps} {times[-1] if step >= warmup else 0:.3f}s"
              f"{' (warm-up)' if step < warmup else ''}", flush=True)
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else peak_rss_kb() * 1024)
    return {"engine": engine_name, "amp": engine.amp, "median_step_s": statistics.median(times), "step_times_s": times,
            "peak_memory_gb": round(peak / 2**30, 3),
            "peak_memory_kind": "cuda max allocated" if dev.type == "cuda" else "process peak RSS"}


def _measure_in_child(queue, kwargs) -> None:
    queue.put(measure_engine(**kwargs))


def _checked_device(device: Optional[str]) -> str:
    """The device to measure on (default: cuda when available). A wrong one fails here: in the
    child process it would fail where the parent, waiting for the figures, never hears of it."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UsageError(f"Unknown device {device!r}; use cpu or cuda.") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"Device {device!r}, but torch sees no CUDA device here; use --device cpu.")
    return device


def run_train_benchmark(batch_size: int = 8, steps: int = 5, warmup: int = 2, amp: str = "off",
                        device: Optional[str] = None, latent_cache: bool = True, rank: int = 8,
                        gradient_checkpointing: bool = False,
                        engines: Sequence[str] = ("baseline", "dcac")) -> Dict[str, object]:
    """Both engines, each in a fresh process; returns times, their ratio and peak memory."""
    device = _checked_device(device)
    context = multiprocessing.get_context("spawn")
    results = {}
    for name in engines:
        print(f"Measuring {name} (batch {batch_size}, amp {amp}, {device}) ...", flush=True)
        queue = context.Queue()
        kwargs = dict(engine_name=name, batch_size=batch_size, steps=steps, warmup=warmup, amp=amp, device=device,
                      latent_cache=latent_cache, rank=rank, gradient_checkpointing=gradient_checkpointing)
        child = context.Process(target=_measure_in_child, args=(queue, kwargs))
        child.start()
        results[name] = queue.get()
        child.join()
    summary: Dict[str, object] = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
        "batch_size": batch_size, "amp": amp, "latent_cache": latent_cache, "lora_rank": rank,
        "gradient_checkpointing": gradient_checkpointing, "engines": results,
    }
    if "baseline" in results and "dcac" in results:
        summary["dcac_over_baseline"] = round(results["dcac"]["median_step_s"] / results["baseline"]["median_step_s"], 3)
    return summary
