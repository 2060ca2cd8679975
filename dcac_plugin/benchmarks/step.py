"""One training step of the baseline or dcac engine, built from a config, ready to run,
time, count or plan, on any device.

The step is the engine (model, diffusion feedback, optimizer, as ``dcac train`` builds them
from the config, randomly initialised) and a synthetic PK batch. On ``cpu`` or ``cuda`` it
runs the engine's own ``forward_backward``. On ``meta`` nothing is allocated or computed:
the modules are built on PyTorch's meta device and every tensor becomes a FakeTensor (meta
storage) that presents itself as a CPU tensor, so the engine, which runs on the CPU without
a GPU, and CPU autocast work unchanged, while FLOP counters and memory trackers see every
operation of the real-size step within seconds.

A symbolic step may present its tensors as CUDA tensors instead (``fake_device="cuda"``):
the engine then takes its GPU code paths (CUDA autocast, the gradient scaler for fp16,
``.cuda()`` and ``.to(device)`` moves), and FakeTensor's device checks catch any tensor left
on the CPU, without a GPU. That needs torch.cuda to answer as if a GPU were there
(``is_available``, ``current_device``, ...) while FakeTensorMode still keeps away from the
CUDA runtime: the caller patches both, as tests/fake_cuda.py does.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from yacs.config import CfgNode as CN

IMAGES_PER_IDENTITY = 4  # PK batches, as the training sampler draws them
CPU = torch.device("cpu")


class FixedPosteriors:
    """Stands in for the latent cache of a benchmark batch: the same posteriors every step."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean, self.std = mean, std

    def lookup(self, paths, device=None):
        return self.mean.to(device), self.std.to(device)


class SyntheticPaths(Sequence[str]):
    """The image names of a synthetic batch, ``img0``, ``img1``, ..., made when asked for:
    a symbolic step's batch may be as large as its caller plans (its tensors hold no
    memory), and a list of a billion names would take tens of GB."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if not -self.count <= index < self.count:
            raise IndexError(index)
        return f"img{index % self.count}"


def benchmark_config(engine: str, amp: str = "off", rank: int = 8, gradient_checkpointing: bool = False,
                     latent_cache: bool = True, opts: Optional[List[str]] = None) -> CN:
    """The config a benchmark step is built from: the defaults (the paper's recipe), no
    pretrained weights, and the given engine and speed options; ``opts`` (KEY VALUE) last."""
    from dcac_config.loading import build_config

    return build_config(None, ["engine", engine, "model.pretrained", "False", "train.amp", amp,
                               "dcac.lora.rank", str(rank), "train.gradient_checkpointing",
                               str(gradient_checkpointing), "dcac.diffusion.latent_cache", str(latent_cache)]
                        + list(opts or []))


@dataclass
class TrainingStep:
    """An engine ready for one training step on ``data``.

    With ``fake_mode`` set (built on ``meta``) every call must run inside :meth:`scope`, and
    FLOP counters or memory trackers must be entered inside it, so that they see the
    operations before the fake mode answers them.
    """

    engine: Any
    data: Dict[str, Any]
    fake_mode: Optional[Any] = None

    @property
    def model(self) -> nn.Module:
        return self.engine.model

    @property
    def feedback(self) -> Optional[nn.Module]:
        return getattr(self.engine, "feedback", None)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.engine.optimizer

    @property
    def symbolic(self) -> bool:
        """Whether the step's tensors are FakeTensors (built on ``meta``)."""
        return self.fake_mode is not None

    def modules(self) -> List[nn.Module]:
        """The networks the step trains or runs: the Re-ID model and, for dcac, the feedback."""
        return [self.model] + ([self.feedback] if self.feedback is not None else [])

    def scope(self) -> ContextManager:
        """The fake mode of a symbolic step (a no-op context for a real one)."""
        return self.fake_mode if self.fake_mode is not None else contextlib.nullcontext()

    def _batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        imgs, pids = self.engine.parse_data_for_train(self.data)
        return imgs.to(self.engine.device), pids.to(self.engine.device)

    def forward(self) -> Tuple[Any, Dict[str, torch.Tensor], torch.Tensor]:
        """The forward half of ``forward_backward``: model, loss terms and total loss under
        the engine's autocast; returns (output, terms, loss)."""
        from ..speed.performance import autocast

        engine = self.engine
        imgs, pids = self._batch()
        with autocast(engine.device, engine.amp):
            output = engine.train_model(imgs)
            terms = engine.compute_losses(output, pids, self.data)
            loss = engine.combine_losses(terms)
        return output, terms, loss

    def run(self) -> None:
        """One training step: the engine's ``forward_backward``.

        A symbolic step has no values to read back, so it runs the same sequence (forward,
        zero_grad, scaled backward, optimizer step) without what reads them: the finite-loss
        check, the loss scaler's inf check and scale update, the PCL memory update (with
        ``torch.unique``) and the loss summary. None of these multiplies matrices, and all
        happen after the backward pass has freed the activations.
        """
        if not self.symbolic:
            self.engine.forward_backward(self.data)
            return
        _, _, loss = self.forward()
        self.optimizer.zero_grad()
        self.engine.scaler.scale(loss).backward()
        self.optimizer.step()

    def inference(self) -> torch.Tensor:
        """The Re-ID encoder's eval-mode forward on the batch (no gradient), as feature
        extraction and evaluation run it; the model is back in train mode afterwards."""
        from ..speed.performance import autocast

        imgs, _ = self._batch()
        self.model.eval()
        try:
            with torch.no_grad(), autocast(self.engine.device, self.engine.amp):
                return self.model(imgs)
        finally:
            self.model.train()


def as_fake(module: nn.Module, fake_mode, device: torch.device = CPU) -> nn.Module:
    """Turn the meta parameters and buffers of ``module`` into FakeTensors that present as
    tensors on ``device`` (meta storage: still nothing allocated), in place."""
    convert = fake_mode.fake_tensor_converter.from_meta_and_device
    return module._apply(lambda tensor: convert(fake_mode, tensor, device))


def _diffusion_configs(cfg: CN) -> Optional[Dict[str, Dict[str, Any]]]:
    """The architecture configs of the config's diffusion model (dcac only); nothing is
    downloaded, and ``tiny`` is written (with real weights) on first use."""
    if cfg.engine != "dcac":
        return None
    from ..diffusion import load_diffusion_configs
    from ..engines.dcac import resolve_diffusion_source

    return load_diffusion_configs(resolve_diffusion_source(cfg.dcac.diffusion.pretrained))


def _build_networks(cfg: CN, num_classes: int, device: torch.device,
                    diffusion_configs: Optional[Dict[str, Dict[str, Any]]]):
    """The Re-ID model and, for dcac, the diffusion feedback, randomly initialised on ``device``."""
    from ..diffusion import build_diffusion_architecture
    from ..engines.dcac import build_diffusion_feedback
    from ..run.launcher import build_model
    from ..speed.performance import enable_gradient_checkpointing, use_faster_unet_kernels

    model = build_model(cfg, num_classes, "reid", use_gpu=device.type == "cuda").to(device)
    feedback = None
    if diffusion_configs is not None:
        components = build_diffusion_architecture(diffusion_configs, device=device)
        feedback = build_diffusion_feedback(cfg, num_classes, model.feature_dim, components).to(device)
    # As the launcher's apply_speed_options, without its log lines (stats prints JSON).
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing([model] + ([feedback.denoiser.unet] if feedback is not None else []))
    if feedback is not None:
        use_faster_unet_kernels(cfg, feedback.denoiser.unet, device.type)
    return model, feedback


def _build_engine(cfg: CN, num_classes: int, model: nn.Module, feedback: Optional[nn.Module], use_gpu: bool,
                  symbolic: bool):
    """The engine ``cfg.engine`` as the launcher builds it from the config, with a stand-in
    data manager (the step brings its own batch)."""
    import dcac_plugin  # noqa: F401  (registration)

    from ..registry import ENGINES
    from ..run.optim import build_optimizer

    trained = nn.ModuleDict({"model": model, **({"auxiliary": feedback} if feedback is not None else {})})
    optimizer = build_optimizer(cfg, trained)
    manager = SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=num_classes, sources=[])
    # The dcac engine moves its feedback to its device; Module.to swaps FakeTensor parameters
    # for new ones, which fails for parameters the optimizer already holds. A symbolic
    # feedback is on its (fake) device already, so it is attached after construction.
    extra = {"auxiliary": feedback} if feedback is not None and not symbolic else {}
    engine = ENGINES.get(cfg.engine).from_config(cfg, manager, model, optimizer, None, use_gpu, **extra)
    if feedback is not None and symbolic:
        engine.feedback = feedback
    return engine


def _attach_batch(cfg: CN, engine, batch_size: int, num_classes: int, device: torch.device) -> Dict[str, Any]:
    """A synthetic PK batch; for dcac either cached posteriors of its diffusion views (the
    latent cache) or the raw diffusion views beside the Re-ID views (encoded every step)."""
    ids = (torch.arange(batch_size) // IMAGES_PER_IDENTITY) % num_classes
    reid_view = torch.randn(batch_size, 3, cfg.data.height, cfg.data.width, device=device)
    data: Dict[str, Any] = {"img": reid_view, "pid": ids.to(device),
                            "impath": SyntheticPaths(batch_size)}
    if cfg.engine == "dcac":
        size = cfg.dcac.diffusion.image_size
        diffusion_view = torch.rand(batch_size, 3, size, size, device=device) * 2 - 1
        if cfg.dcac.diffusion.latent_cache:
            from ..diffusion import posterior_parameters

            engine.latent_cache = FixedPosteriors(*posterior_parameters(engine.feedback.denoiser.vae, diffusion_view))
        else:
            data["img"] = [reid_view, diffusion_view]
    # The PCL memory a first epoch would start from: one unit prototype per identity.
    engine.memory.prototypes.copy_(torch.nn.functional.normalize(torch.randn_like(engine.memory.prototypes), dim=1))
    return data


def build_training_step(cfg: CN, num_classes: int = 751, batch_size: int = 8,
                        device: str = "cpu", fake_device: str = "cpu") -> TrainingStep:
    """The training step of ``cfg.engine`` (baseline or dcac) on ``device`` (cpu, cuda, meta),
    for a batch of ``batch_size`` images of ``num_classes`` identities, in train mode.

    On ``meta`` the step's FakeTensors present as tensors on ``fake_device``: ``cpu`` (FLOP
    counts, memory plans) or ``cuda`` (the engine's GPU code paths, with torch.cuda patched
    to report a GPU; see the module's docstring). Precision, gradient checkpointing, LoRA
    rank, fine-tuning mode, latent cache and image sizes come from ``cfg`` (see
    :func:`benchmark_config`).
    """
    dev = torch.device(device)
    if fake_device != "cpu" and dev.type != "meta":
        raise ValueError(f"fake_device {fake_device!r} is for steps built on meta, not on {device!r}")
    torch.manual_seed(0)
    diffusion_configs = _diffusion_configs(cfg)  # outside the meta context: it may write files
    fake_mode = None
    if dev.type == "meta":
        from torch._subclasses.fake_tensor import FakeTensorMode

        with torch.device("meta"):
            model, feedback = _build_networks(cfg, num_classes, dev, diffusion_configs)
        # Real tensors the modules keep outside parameters and buffers (the noise
        # schedule) are faked where they are used.
        fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        dev = torch.device(fake_device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", 0)  # as the engine names its device, and FakeTensors normalise it
        for network in (model, feedback):
            if network is not None:
                as_fake(network, fake_mode, dev)
    else:
        model, feedback = _build_networks(cfg, num_classes, dev, diffusion_configs)
    with fake_mode if fake_mode is not None else contextlib.nullcontext():
        engine = _build_engine(cfg, num_classes, model, feedback, use_gpu=dev.type == "cuda",
                               symbolic=fake_mode is not None)
        data = _attach_batch(cfg, engine, batch_size, num_classes, dev)
    model.train()
    if feedback is not None:
        feedback.train()
    return TrainingStep(engine, data, fake_mode)
