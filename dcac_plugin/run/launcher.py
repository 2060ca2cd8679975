"""Build everything a config names and run it: the code behind ``dcac train`` and scripts/main.py."""
from __future__ import annotations

import json
import os
import os.path as osp
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torchreid import data as reid_data
from torchreid import models as reid_models
from torchreid import utils as reid_utils
from yacs.config import CfgNode as CN

from dcac_config.errors import ConfigError
from dcac_config.layouts import check_datasets
from dcac_config.names import nearest_name
from dcac_config.run_folder.run_output import run_config_path, run_output, show_configuration
from dcac_config.run_folder.save_dir import checkpoint_paths, remove_outputs

from ..data.combineall import combineall_counts_cameras
from ..data.loaders import identities_below, rebuild_loaders, skip_unreadable_images, train_items
from ..data.msmt17 import msmt17_train_with_val
from ..data.random_splits import expand_split_targets
from ..data.samplers import build_train_sampler
from ..data.stable_labels import stable_identity_labels
from ..data.transforms import INTERPOLATIONS, ReidTransforms, describe_transforms, reid_transforms, torchreid_receives
from ..data.views import TwoViewTransform, diffusion_view_transform
from ..engines.toolbox_kwargs import device_kwargs, engine_run_kwargs, imagedata_kwargs
from ..models import CLIP_MODELS, BNNeckReID, build_toolbox_reid, check_toolbox_model
from ..models.toolbox_weights import checked_toolbox_downloads
from ..registry import ENGINES
from ..speed.cpu_convolution import MAX_MATRIX_PRODUCT_ROWS
from ..speed.performance import AMP_CHOICES, compile_modules, enable_gradient_checkpointing, use_faster_unet_kernels
from ..utils import distributed
from ..utils.checkpoint import (CheckpointError, atomic_write, check_finite_weights, check_resumable, export_encoder,
                                load_checkpoint, load_model_weights, model_state_dict)
from ..utils.preparation import prepared_in_rounds
from ..utils.toolbox_tables import image_dataset_table, model_factory
from ..utils.writable import writing_torch_cache
from .determinism import determinism_errors_explained, enable_determinism, restored_determinism
from .optim import build_optimizer, build_scheduler
from .resumption import (apply_learning_rates, asked_learning_rates, check_resume_settings, checked_checkpoint_file,
                         epochs_left)
from .validation import check_values


def _unknown(kind: str, name: str, valid, note: str = "") -> ConfigError:
    hint = nearest_name(name, valid)
    return ConfigError(f"Unknown {kind} {name!r}." + (f" Did you mean {hint!r}?" if hint else "")
                       + f" Valid: {', '.join(sorted(valid))}" + note)


def _dataset_note(name: str) -> str:
    """For a dotted dataset name, most likely a KEY VALUE override that ``-s``/``-t`` took in
    (their list ends only at a word naming a config key, see dcac_cli.overrides): how to write it."""
    if "." not in name:
        return ""
    return (f". If {name!r} is meant as a KEY VALUE override: the list after -s/-t ends at the first word that names "
            f"a config key, and {name.partition('.')[0]!r} is no config section; check the key, or put -- before the "
            "overrides.")


def check_epochs(cfg: CN) -> None:
    """A training run that would train no epoch (torchreid runs on silently: an empty results
    table, and the random initialisation exported as the run's encoder)."""
    if cfg.test.evaluate:
        return
    if cfg.train.max_epoch < 1:
        raise ConfigError(f"train.max_epoch is {cfg.train.max_epoch}: a training run needs at least 1 epoch. Set "
                          "train.max_epoch to 1 or more, or test.evaluate True to evaluate only.")
    if not 0 <= cfg.train.start_epoch < cfg.train.max_epoch:
        raise ConfigError(f"train.start_epoch {cfg.train.start_epoch} is outside [0, train.max_epoch = "
                          f"{cfg.train.max_epoch}), so no epoch would be trained. Set train.start_epoch between 0 and "
                          f"{cfg.train.max_epoch - 1}; to continue a stopped run, use model.resume instead.")


def check_config(cfg: CN) -> None:
    """Names that torchreid would only reject deep inside a run, checked up front."""
    check_epochs(cfg)
    if cfg.engine not in ENGINES:
        raise _unknown("engine (config key `engine`)", cfg.engine, ENGINES.names())
    if cfg.model.name not in model_factory():
        raise _unknown("model (config key `model.name`)", cfg.model.name, model_factory())
    datasets = image_dataset_table()
    for key in ("sources", "targets"):
        for name in cfg.data[key]:
            if name not in datasets:
                raise _unknown(f"dataset in data.{key}", name, datasets, _dataset_note(name))
    if cfg.train.amp not in AMP_CHOICES:
        raise _unknown("mixed-precision mode (train.amp)", cfg.train.amp, AMP_CHOICES)
    if cfg.dcac.resize_interpolation not in INTERPOLATIONS:
        raise _unknown("resize interpolation (dcac.resize_interpolation)", cfg.dcac.resize_interpolation,
                       INTERPOLATIONS)
    if cfg.dcac.test_resize_interpolation not in ("", *INTERPOLATIONS):
        raise _unknown("resize interpolation (dcac.test_resize_interpolation; empty = dcac.resize_interpolation)",
                       cfg.dcac.test_resize_interpolation, INTERPOLATIONS)
    if cfg.data.type != "image":
        raise ConfigError("Only data.type 'image' is supported by dcac-reid's launcher.")
    if distributed.launched_info().enabled and cfg.sampler.train_sampler not in (
            "RandomIdentitySampler", "RandomSampler", "SequentialSampler"):
        raise ConfigError(f"sampler.train_sampler {cfg.sampler.train_sampler!r} has no distributed version; under "
                          "torchrun use RandomIdentitySampler, RandomSampler or SequentialSampler.")
    if ENGINES.get(cfg.engine).model_loss == "reid" and cfg.model.name not in CLIP_MODELS:
        check_toolbox_model(cfg.model.name)
    check_values(cfg)


def warn_rare_identities(cfg: CN, items: list) -> None:
    """torchreid's identity sampler silently repeats images of identities with fewer than K."""
    if cfg.sampler.train_sampler != "RandomIdentitySampler":
        return
    rare = identities_below(items, cfg.sampler.num_instances)
    if rare:
        examples = ", ".join(f"pid {pid}: {n}" for pid, n in list(rare.items())[:5])
        print(f"Note: {len(rare)} training identities have fewer than sampler.num_instances = "
              f"{cfg.sampler.num_instances} images ({examples}{', ...' if len(rare) > 5 else ''}); their images are "
              "drawn with replacement to fill a batch, as torchreid does. Lower sampler.num_instances to avoid repeats.")


def diffusion_view_source(cfg: CN) -> Optional[str]:
    """Where the engine takes the diffusion view from: ``"batch"`` (each training batch carries
    it beside the Re-ID view), ``"latent cache"`` (encoded once before training), or None (the
    engine has no diffusion branch)."""
    needs_diffusion_view = getattr(ENGINES.get(cfg.engine), "needs_diffusion_view", None)
    if needs_diffusion_view is None:
        return None
    return "batch" if needs_diffusion_view(cfg) else "latent cache"


def run_transforms(cfg: CN) -> ReidTransforms:
    """The Re-ID view's transforms; the training one yields the pair (Re-ID view, diffusion
    view) when batches carry the diffusion view."""
    transforms = reid_transforms(cfg)
    if diffusion_view_source(cfg) != "batch":
        return transforms
    return transforms._replace(train=TwoViewTransform(transforms.train,
                                                      diffusion_view_transform(cfg.dcac.diffusion.image_size)))


def applied_transforms(cfg: CN, manager) -> List[Tuple[str, Callable]]:
    """(pass, transform) for every pass of a run that reads images, taken from what applies
    them: the loaders, the PCL memory pass's transform and, for the latent cache, the diffusion
    view from the function the engine builds it with. Evaluation alone (``test.evaluate``)
    applies the test transforms only."""
    passes: List[Tuple[str, Callable]] = []
    if not cfg.test.evaluate:
        train = manager.train_loader.dataset.transform
        if isinstance(train, TwoViewTransform):
            passes += [("Train transforms (applied), Re-ID view", train.reid_transform),
                       ("Train transforms (applied), diffusion view (in every batch)", train.diffusion_transform)]
        else:
            passes.append(("Train transforms (applied)", train))
        if hasattr(ENGINES.get(cfg.engine), "extract_train_features"):
            passes.append(("PCL memory transforms (every training image, each epoch)", manager.transform_memory))
        if diffusion_view_source(cfg) == "latent cache":
            passes.append(("Diffusion view transforms (encoded once into the latent cache)",
                           diffusion_view_transform(cfg.dcac.diffusion.image_size)))
    passes.append(("Test transforms (applied)", manager.transform_te))
    return passes


def build_datamanager(cfg: CN, use_gpu: bool):
    """torchreid's ImageDataManager (datasets checked against their expected layouts first;
    ``msmt17`` with its val images in training when ``msmt17.train_with_val``; CUHK02 and
    CUHK-SYSU with stable labels; ``data.combineall`` counting the combined cameras; our transforms
    in place of its own, the PCL memory's as ``transform_memory``), its loaders rebuilt with
    checked image reads and, under torchrun, the distributed sampler; a target with random splits
    (iLIDS, PRID, GRID, VIPeR) gets one query/gallery pair per split evaluated. Prints the
    transforms that will run."""
    check_datasets(list(cfg.data.sources) + list(cfg.data.targets), cfg.data.root)
    transforms = run_transforms(cfg)
    # The manager's own training sampler is replaced below (it would only assert on a bad
    # identity count); a plain one keeps its constructor from failing first.
    with msmt17_train_with_val(cfg.msmt17.train_with_val), stable_identity_labels(), \
            combineall_counts_cameras(cfg.data.combineall), torchreid_receives(transforms):
        manager = reid_data.ImageDataManager(**{**imagedata_kwargs(cfg), "train_sampler": "RandomSampler"},
                                             **device_kwargs(reid_data.ImageDataManager.__init__, use_gpu))
    manager.transform_memory = transforms.memory  # torchreid has no memory pass
    expand_split_targets(manager, cfg.data.root, list(cfg.test.split_ids))
    if cfg.data.skip_corrupt_images:
        skip_unreadable_images(manager, workers=max(1, cfg.data.workers))
    items = train_items(manager)
    # Evaluation alone draws no training batch: its identity counts need not fill one.
    sampler_name = "RandomSampler" if cfg.test.evaluate else cfg.sampler.train_sampler
    if not cfg.test.evaluate:
        warn_rare_identities(cfg, items)
    try:
        sampler = build_train_sampler(items, sampler_name, cfg.train.batch_size,
                                      cfg.sampler.num_instances, cfg.sampler.num_cams, cfg.sampler.num_datasets,
                                      seed=cfg.train.seed, rank=distributed.rank(),
                                      world_size=distributed.world_size())
    except ValueError as err:
        raise ConfigError(str(err)) from None
    rebuild_loaders(manager, sampler)
    print(describe_transforms(applied_transforms(cfg, manager)))
    return manager


def build_model(cfg: CN, num_classes: int, model_loss: str, use_gpu: bool) -> nn.Module:
    """A model from torchreid's factory; ours also get the input size and CLIP weight source.

    For our engines (``model_loss`` ``reid``) any other torchreid model gets the paper's Re-ID
    head (:class:`~dcac_plugin.models.ToolboxReID`); torchreid's engines get the model as is.
    """
    name = cfg.model.name
    if name in CLIP_MODELS:
        return model_factory()[name](num_classes=num_classes, loss=model_loss, pretrained=cfg.model.pretrained,
                                     weights=cfg.dcac.clip_weights, img_size=(cfg.data.height, cfg.data.width))
    with writing_torch_cache(f"torchreid's pretrained {name} weights"), checked_toolbox_downloads(name):
        if model_loss == "reid":
            return build_toolbox_reid(name, num_classes, model_loss, pretrained=cfg.model.pretrained,
                                      **device_kwargs(reid_models.build_model, use_gpu))
        return reid_models.build_model(name=name, num_classes=num_classes, loss=model_loss,
                                       pretrained=cfg.model.pretrained,
                                       **device_kwargs(reid_models.build_model, use_gpu))


def weight_cache_folders() -> List[str]:
    """Where building a model may write: the Hugging Face hub cache (CLIP, Stable Diffusion),
    torch's cache (torchreid's ImageNet weights), open_clip's cache of OpenAI's files and ours
    (the generated tiny diffusion model)."""
    import torch.hub
    from huggingface_hub import constants

    from ..engines.dcac import cache_dir

    return [constants.HF_HUB_CACHE, osp.dirname(torch.hub.get_dir()), osp.expanduser("~/.cache/clip"), cache_dir()]


def load_weights_path(cfg: CN) -> str:
    """``model.load_weights``, read from ``model.load_weights_dir`` when it is a relative path (the
    released-checkpoint configs name the authors' files, e.g. ``source_ma.pth``, and the user's
    folder of them goes in that key)."""
    path = osp.expanduser(cfg.model.load_weights)
    if osp.isabs(path):
        return path
    folder = osp.expanduser(cfg.model.load_weights_dir)
    resolved = osp.join(folder, path) if folder else path
    if not osp.exists(resolved):
        where = (f"in model.load_weights_dir {folder}" if folder
                 else f"in the current directory {os.getcwd()} (model.load_weights_dir is empty)")
        raise CheckpointError(f"model.load_weights {cfg.model.load_weights} is not {where}. Set model.load_weights_dir "
                              "to the folder holding it, or give model.load_weights as a full path.")
    return resolved


def resolve_resume_path(path: str) -> str:
    """``model.resume`` names a checkpoint file, or a run's save_dir (its ``latest``)."""
    if osp.isdir(path):
        for candidate in (checkpoint_paths(path)["latest"], osp.join(path, "latest.pth.tar")):
            if osp.isfile(candidate):
                return candidate
        raise CheckpointError(f"model.resume {path} is a folder without model/latest.pth.tar; name a checkpoint file.")
    return checked_checkpoint_file(path)


def read_training_state(path: str) -> Tuple[str, Dict[str, Any]]:
    """(checkpoint file, its training state) for ``model.resume``."""
    path = resolve_resume_path(path)
    state = load_checkpoint(path)
    if "epoch" not in state or "optimizer" not in state:
        raise CheckpointError(f"{path} holds weights, not a training state; use model.load_weights to start from it.")
    check_finite_weights(state, path)  # weights, optimizer moments, PCL memory, diffusion state alike
    return path, state


def training_state_from_rank0(path: str) -> Tuple[str, Dict[str, Any]]:
    """:func:`read_training_state` on rank 0, handed to every rank (collective under torchrun):
    the checkpoint need only be on rank 0's disk, and every rank resumes from the same file.
    An error reading it stops every rank with rank 0's message."""
    read = None
    if distributed.is_main_process():
        try:
            read = ("state", read_training_state(path))
        except CheckpointError as err:
            read = ("error", str(err))
    kind, value = distributed.broadcast_object(read)
    if kind == "error":
        raise CheckpointError(value)
    return value


def resume(path: str, model: nn.Module, engine, cfg: Optional[CN] = None) -> int:
    """Restore everything a checkpoint of ours holds (weights, optimizer, scheduler, PCL
    memory, diffusion state, RNG states, results); returns the epoch to start from. The
    learning rates the engine's optimizer was built with replace the checkpoint's
    (:func:`apply_learning_rates`). With the run's ``cfg``, a ``train.max_epoch`` below the
    checkpoint's epoch is refused and one equal to it said (nothing left to train)."""
    path, state = training_state_from_rank0(path)
    weights = model_state_dict(state)
    check_resumable(model, weights, path)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"Checkpoint {path} does not fit model {type(model).__name__}: {err}") from None
    epoch = int(state["epoch"])
    line = epochs_left(path, epoch, cfg) if cfg is not None else f"Resumed from {path} at epoch {epoch}"
    asked = asked_learning_rates(engine)
    try:
        engine.load_training_state(state)
    except ValueError as err:  # torch's optimizer: other parameter groups
        raise CheckpointError(
            f"Checkpoint {path} does not fit this run's optimizer ({err}): it was written by another engine or "
            "optimizer setup (engine, train.optim, train.staged_lr, train.new_layers, dcac.finetune). model.resume "
            f"continues the same training only; to start from its weights, use model.load_weights {path}.") from None
    print(line)
    note = apply_learning_rates(engine, asked)
    if note:
        print(note)
    return epoch


def apply_speed_options(cfg: CN, model: nn.Module, auxiliary: Optional[nn.Module], use_gpu: bool) -> None:
    """train.gradient_checkpointing, train.cpu_matmul_convolutions (without a GPU),
    train.fused_lora and train.compile on the Re-ID model and the U-Net."""
    networks = [model] + ([auxiliary.denoiser.unet] if auxiliary is not None else [])
    if cfg.train.gradient_checkpointing:
        print(f"Gradient checkpointing on {enable_gradient_checkpointing(networks)} networks")
    if auxiliary is not None:
        convolutions, fused = use_faster_unet_kernels(cfg, auxiliary.denoiser.unet, "cuda" if use_gpu else "cpu")
        if convolutions:
            print(f"CPU: frozen U-Net convolutions with at most {MAX_MATRIX_PRODUCT_ROWS} output rows (batch x height "
                  "x width) run as one matrix product; train.cpu_matmul_convolutions False keeps oneDNN's kernels")
        if fused:
            print(f"LoRA: {fused} adapted layers add their update by one in-place matrix product where they run in "
                  "fp32 outside autocast; train.fused_lora False keeps peft's forward")
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
    """Build data, model, optimizer, scheduler and engine from ``cfg``; resume if it says so.

    Under torchrun every rank calls this; where files are written (generated datasets, downloaded
    or generated weights), one process per file system writes first and the others then read
    (:mod:`~dcac_plugin.utils.preparation`).
    """
    check_config(cfg)
    if cfg.train.deterministic:
        # First: cuBLAS reads CUBLAS_WORKSPACE_CONFIG once, and init_distributed (set_device)
        # or model.cuda() below may be the first to start CUDA.
        print("\n".join(enable_determinism()))
    use_gpu = bool(cfg.use_gpu) and torch.cuda.is_available()
    info = distributed.init_distributed(use_gpu, cfg.train.dist_backend, cfg.train.dist_timeout_minutes,
                                        cfg.train.dist_rendezvous_minutes)
    # Ranks draw different augmentations and noise; DDP gives them rank 0's initial weights.
    reid_utils.set_random_seed(cfg.train.seed + info.rank)
    engine_cls = ENGINES.get(cfg.engine)
    with prepared_in_rounds([cfg.data.root]):
        datamanager = build_datamanager(cfg, use_gpu)
    print(f"Building model: {cfg.model.name}")
    # Weights are downloaded (or the tiny diffusion model generated) once per file system.
    auxiliary = None
    with prepared_in_rounds(weight_cache_folders()):
        model = build_model(cfg, datamanager.num_train_pids, engine_cls.model_loss, use_gpu)
        # Modules trained beside the Re-ID model (dcac: prompts, adapters); not needed to evaluate.
        if hasattr(engine_cls, "build_auxiliary") and not cfg.test.evaluate:
            auxiliary = engine_cls.build_auxiliary(cfg, model, datamanager.num_train_pids)
    if cfg.model.load_weights:
        print(load_model_weights(model, load_weights_path(cfg)))
    if use_gpu:
        model = model.cuda()
        auxiliary = auxiliary.cuda() if auxiliary is not None else None
    apply_speed_options(cfg, model, auxiliary, use_gpu)
    trained = nn.ModuleDict({"model": model, "auxiliary": auxiliary}) if auxiliary is not None else model
    optimizer = build_optimizer(cfg, trained)
    scheduler = build_scheduler(cfg, optimizer)
    print(f"Building {cfg.engine}-engine")
    extra = {"auxiliary": auxiliary} if hasattr(engine_cls, "build_auxiliary") else {}
    engine = engine_cls.from_config(cfg, datamanager, model, optimizer, scheduler, use_gpu, **extra)
    if hasattr(engine, "setup_summary") and not cfg.test.evaluate:
        print(f"{cfg.engine} run built from:\n" + "\n".join(f"  {line}" for line in engine.setup_summary(cfg)))
    run_kwargs = engine_run_kwargs(cfg)
    if cfg.model.resume:
        run_kwargs["start_epoch"] = resume(cfg.model.resume, model, engine, cfg)
    if info.enabled:
        engine.setup_distributed()
        print(f"Distributed: {info.world_size} processes ({torch.distributed.get_backend()}), "
              f"{cfg.train.batch_size} images per rank and step")
    return PreparedRun(engine, model, optimizer, scheduler, run_kwargs)


def run(cfg: CN) -> Dict[str, Any]:
    """Train and/or evaluate as ``cfg`` says; returns and writes ``results.json`` in the save dir.

    ``config.yaml`` is written once everything is built, just before training (or evaluation)
    starts, so that a run that failed to start never looks like a run.
    Launched with torchrun, every rank runs this; rank 0 alone logs, evaluates and writes. An
    inconsistent torchrun environment (a stray RANK, a bad MASTER_ADDR) stops it before any work.
    """
    distributed.check_launch_environment()
    check_config(cfg)
    if cfg.model.load_weights:
        load_weights_path(cfg)  # a relative path not found in model.load_weights_dir: said before any work
    # Before any work: what of this config a resume cannot change (rank 0 has the checkpoint).
    is_main = distributed.launched_info().is_main
    resume_notes = check_resume_settings(cfg, resolve_resume_path(cfg.model.resume)) if cfg.model.resume and is_main \
        else []
    # train.deterministic's settings are the process's: restored when the run ends, for the next
    # run of dcac experiments / demo in this process.
    with run_output(cfg, is_main) as replaced, restored_determinism(), \
            determinism_errors_explained(cfg.train.deterministic):
        show_configuration(cfg)
        for note in resume_notes:
            print(note)
        prepared = prepare(cfg)
        if is_main:
            if replaced:
                remove_outputs(cfg.data.save_dir, replaced)
            atomic_write(run_config_path(cfg.data.save_dir), lambda handle: handle.write(cfg.dump().encode()))
        prepared.engine.run(**prepared.run_kwargs)
        summary = {"engine": cfg.engine, "model": cfg.model.name, "sources": list(cfg.data.sources),
                   "targets": list(cfg.data.targets), "save_dir": cfg.data.save_dir,
                   "world_size": distributed.world_size(), "results": prepared.engine.results}
        if distributed.is_main_process():
            if isinstance(prepared.model, BNNeckReID) and not cfg.test.evaluate:
                path = export_encoder(prepared.model, osp.join(cfg.data.save_dir, "encoder.safetensors"))
                print(f"Test-time encoder exported to {path}")
            results = json.dumps(summary, indent=2).encode()
            atomic_write(osp.join(cfg.data.save_dir, "results.json"), lambda handle: handle.write(results),
                         size=len(results))
    distributed.barrier()
    distributed.destroy()
    return summary
