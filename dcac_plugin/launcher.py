"""Build everything a config names and run it: the code behind ``dcac train`` and scripts/main.py."""
from __future__ import annotations

import contextlib
import json
import os
import os.path as osp
import sys
import time
from typing import Any, Dict, NamedTuple, Optional

import torch
from torch import nn
from yacs.config import CfgNode as CN

from torchreid import data as reid_data
from torchreid import models as reid_models
from torchreid import utils as reid_utils

from .checkpoint import export_encoder, load_checkpoint, load_model_weights, model_state_dict
from .config import ConfigError, device_kwargs, engine_run_kwargs, imagedata_kwargs
from .data.transforms import build_reid_transforms, install_transforms
from .data.views import TwoViewTransform, diffusion_view_transform
from .models import CLIP_MODELS, ClipReID
from .optim import build_optimizer, build_scheduler
from .performance import AMP_MODES, compile_modules, enable_gradient_checkpointing
from .registration import image_dataset_table, model_factory
from .registry import ENGINES, nearest_name


def _unknown(kind: str, name: str, valid) -> ConfigError:
    hint = nearest_name(name, valid)
    return ConfigError(f"Unknown {kind} {name!r}." + (f" Did you mean {hint!r}?" if hint else "")
                       + f" Valid: {', '.join(sorted(valid))}")


def check_config(cfg: CN) -> None:
    """Names that torchreid would only reject deep inside a run, checked up front."""
    if cfg.engine not in ENGINES:
        raise _unknown("engine (config key `engine`)", cfg.engine, ENGINES.names())
    if cfg.model.name not in model_factory():
        raise _unknown("model (config key `model.name`)", cfg.model.name, model_factory())
    datasets = image_dataset_table()
    for key in ("sources", "targets"):
        for name in cfg.data[key]:
            if name not in datasets:
                raise _unknown(f"dataset in data.{key}", name, datasets)
    if cfg.train.amp not in AMP_MODES:
        raise _unknown("mixed-precision mode (train.amp)", cfg.train.amp, AMP_MODES)
    if cfg.data.type != "image":
        raise ConfigError("Only data.type 'image' is supported by dcac-reid's launcher.")
    engine_cls = ENGINES.get(cfg.engine)
    if engine_cls.model_loss == "reid" and cfg.model.name not in CLIP_MODELS:
        raise ConfigError(f"engine {cfg.engine!r} needs a CLIP Re-ID model (BNNeck feature); "
                          f"set model.name to one of {sorted(CLIP_MODELS)}.")


def build_datamanager(cfg: CN, use_gpu: bool, diffusion_view: bool = False):
    """torchreid's ImageDataManager, then our transforms installed in its loaders (with
    ``diffusion_view``, training batches carry the pair (Re-ID view, diffusion view))."""
    manager = reid_data.ImageDataManager(**imagedata_kwargs(cfg),
                                         **device_kwargs(reid_data.ImageDataManager.__init__, use_gpu))
    train_tf, test_tf = build_reid_transforms(cfg.data.height, cfg.data.width, cfg.data.transforms,
                                              cfg.data.norm_mean, cfg.data.norm_std,
                                              interpolation=cfg.dcac.resize_interpolation)
    if diffusion_view:
        train_tf = TwoViewTransform(train_tf, diffusion_view_transform(cfg.dcac.diffusion.image_size))
    install_transforms(manager, train_tf, test_tf)
    return manager


def build_model(cfg: CN, num_classes: int, model_loss: str, use_gpu: bool) -> nn.Module:
    """A model from torchreid's factory; ours also get the input size and CLIP weight source."""
    name = cfg.model.name
    if name in CLIP_MODELS:
        return model_factory()[name](num_classes=num_classes, loss=model_loss, pretrained=cfg.model.pretrained,
                                     weights=cfg.dcac.clip_weights, img_size=(cfg.data.height, cfg.data.width))
    return reid_models.build_model(name=name, num_classes=num_classes, loss=model_loss,
                                   pretrained=cfg.model.pretrained,
                                   **device_kwargs(reid_models.build_model, use_gpu))


def resume(path: str, model: nn.Module, optimizer, scheduler, engine) -> int:
    """Restore a checkpoint written by our engines; returns the epoch to start from."""
    state = load_checkpoint(path)
    model.load_state_dict(model_state_dict(state))
    if state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    engine.load_extra_state(state.get("engine_state") or {})
    print(f"Resumed from {path} at epoch {state['epoch']}")
    return int(state["epoch"])


class _Tee:
    """Writes to the console and a log file.

    torchreid's ``utils.Logger`` closes the real stdout when it is closed or garbage
    collected, which breaks every print after the first run in one process (``dcac demo``).
    """

    def __init__(self, console, path: str) -> None:
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        self.console, self.file = console, open(path, "a", encoding="utf-8")

    def write(self, text: str) -> None:
        self.console.write(text)
        self.file.write(text)

    def flush(self) -> None:
        self.console.flush()
        self.file.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def tee_stdout(path: str):
    """Copy stdout into ``path`` for the duration of a run."""
    previous = sys.stdout
    tee = _Tee(previous, path)
    sys.stdout = tee
    try:
        yield
    finally:
        sys.stdout = previous
        tee.file.close()


def apply_speed_options(cfg: CN, model: nn.Module, auxiliary: Optional[nn.Module]) -> None:
    """train.gradient_checkpointing and train.compile on the Re-ID model and the U-Net."""
    networks = [model] + ([auxiliary.denoiser.unet] if auxiliary is not None else [])
    if cfg.train.gradient_checkpointing:
        print(f"Gradient checkpointing on {enable_gradient_checkpointing(networks)} networks")
    if cfg.train.compile:
        compile_modules(networks, backend=cfg.train.compile)


class PreparedRun(NamedTuple):
    """Everything a config builds, ready for ``engine.run(**run_kwargs)``."""

    engine: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    run_kwargs: Dict[str, Any]


def prepare(cfg: CN) -> PreparedRun:
    """Build data, model, optimizer, scheduler and engine from ``cfg``; resume if it says so."""
    check_config(cfg)
    use_gpu = bool(cfg.use_gpu) and torch.cuda.is_available()
    reid_utils.set_random_seed(cfg.train.seed)
    engine_cls = ENGINES.get(cfg.engine)
    needs_diffusion_view = getattr(engine_cls, "needs_diffusion_view", lambda _cfg: False)(cfg)
    datamanager = build_datamanager(cfg, use_gpu, needs_diffusion_view)
    print(f"Building model: {cfg.model.name}")
    model = build_model(cfg, datamanager.num_train_pids, engine_cls.model_loss, use_gpu)
    if cfg.model.load_weights:
        skipped = load_model_weights(model, cfg.model.load_weights)
        print(f"Loaded weights from {cfg.model.load_weights}" + (f" (skipped {skipped})" if skipped else ""))
    if use_gpu:
        model = model.cuda()
    # Modules trained beside the Re-ID model (dcac: prompts, adapters); not needed to evaluate.
    auxiliary = None
    if hasattr(engine_cls, "build_auxiliary") and not cfg.test.evaluate:
        auxiliary = engine_cls.build_auxiliary(cfg, model, datamanager.num_train_pids)
        if use_gpu:
            auxiliary = auxiliary.cuda()
    apply_speed_options(cfg, model, auxiliary)
    trained = nn.ModuleDict({"model": model, "auxiliary": auxiliary}) if auxiliary is not None else model
    optimizer = build_optimizer(cfg, trained)
    scheduler = build_scheduler(cfg, optimizer)
    print(f"Building {cfg.engine}-engine")
    extra = {"auxiliary": auxiliary} if hasattr(engine_cls, "build_auxiliary") else {}
    engine = engine_cls.from_config(cfg, datamanager, model, optimizer, scheduler, use_gpu, **extra)
    run_kwargs = engine_run_kwargs(cfg)
    if cfg.model.resume:
        run_kwargs["start_epoch"] = resume(cfg.model.resume, model, optimizer, scheduler, engine)
    return PreparedRun(engine, model, optimizer, scheduler, run_kwargs)


def run(cfg: CN) -> Dict[str, Any]:
    """Train and/or evaluate as ``cfg`` says; returns and writes ``results.json`` in the save dir."""
    check_config(cfg)
    os.makedirs(cfg.data.save_dir, exist_ok=True)
    log_name = ("test.log" if cfg.test.evaluate else "train.log") + time.strftime("-%Y-%m-%d-%H-%M-%S")
    with tee_stdout(osp.join(cfg.data.save_dir, log_name)):
        print(f"Show configuration\n{cfg}\n")
        prepared = prepare(cfg)
        prepared.engine.run(**prepared.run_kwargs)
        if isinstance(prepared.model, ClipReID) and not cfg.test.evaluate:
            path = export_encoder(prepared.model, osp.join(cfg.data.save_dir, "encoder.safetensors"))
            print(f"Test-time encoder exported to {path}")
        summary = {"engine": cfg.engine, "model": cfg.model.name, "sources": list(cfg.data.sources),
                   "targets": list(cfg.data.targets), "save_dir": cfg.data.save_dir,
                   "results": prepared.engine.results}
    with open(osp.join(cfg.data.save_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    return summary
