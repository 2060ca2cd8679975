"""Configuration: torchreid's default keys, plus ``engine`` and a ``dcac`` section.

A config written for upstream torchreid merges unchanged and means the same: every
upstream key keeps its upstream default. Choosing ``engine: baseline`` or
``engine: dcac`` starts instead from the paper's recipe (DCAC paper, section 5.2),
so a short YAML file reproduces the paper; any key the file sets still wins.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple

import yaml
from yacs.config import CfgNode as CN

from .errors import ConfigError
from .registry import nearest_name
from .shipped import resolve_config

PAPER_ENGINES = ("baseline", "dcac")


def get_default_config() -> CN:
    """Upstream torchreid's defaults (scripts/default_config.py) plus our additions."""
    cfg = CN()
    cfg.use_gpu = True  # upstream configs set it; it is AND-ed with torch.cuda.is_available()
    # Which engine trains: softmax | triplet (torchreid's own) | baseline | dcac.
    # Empty means "as upstream": the engine named by loss.name.
    cfg.engine = ""

    cfg.model = CN()
    cfg.model.name = "resnet50"
    cfg.model.pretrained = True
    cfg.model.load_weights = ""
    # Ours: the folder a relative model.load_weights is read from ('' = the current directory); the
    # released-checkpoint configs name the authors' files (source_ma.pth, ...) and this their folder.
    cfg.model.load_weights_dir = ""
    cfg.model.resume = ""

    cfg.data = CN()
    cfg.data.type = "image"
    cfg.data.root = "reid-data"
    cfg.data.sources = ["market1501"]
    cfg.data.targets = ["market1501"]
    cfg.data.workers = 4
    cfg.data.split_id = 0
    cfg.data.height = 256
    cfg.data.width = 128
    cfg.data.combineall = False
    cfg.data.transforms = ["random_flip"]
    cfg.data.k_tfm = 1
    cfg.data.norm_mean = [0.485, 0.456, 0.406]
    cfg.data.norm_std = [0.229, 0.224, 0.225]
    cfg.data.save_dir = "log"
    cfg.data.load_train_targets = False
    # Ours: decode every image once before training and drop unreadable ones with a warning
    # (by default an unreadable image stops the run and names the file).
    cfg.data.skip_corrupt_images = False
    # Ours: a save_dir holding another run is refused; True starts over there (its outputs deleted).
    cfg.data.overwrite = False

    cfg.market1501 = CN()
    cfg.market1501.use_500k_distractors = False
    cfg.cuhk03 = CN()
    cfg.cuhk03.labeled_images = False
    cfg.cuhk03.classic_split = False
    cfg.cuhk03.use_metric_cuhk03 = False
    # Ours: torchreid's msmt17 trains on list_train.txt alone (30,248 images); True adds
    # list_val.txt (the same 1,041 identities): the 32,621 training images of the paper's Table 1.
    cfg.msmt17 = CN()
    cfg.msmt17.train_with_val = False

    cfg.sampler = CN()
    cfg.sampler.train_sampler = "RandomSampler"
    cfg.sampler.train_sampler_t = "RandomSampler"
    cfg.sampler.num_instances = 4
    cfg.sampler.num_cams = 1
    cfg.sampler.num_datasets = 1

    cfg.video = CN()
    cfg.video.seq_len = 15
    cfg.video.sample_method = "evenly"
    cfg.video.pooling_method = "avg"

    cfg.train = CN()
    cfg.train.optim = "adam"
    cfg.train.lr = 0.0003
    cfg.train.weight_decay = 5e-4
    cfg.train.max_epoch = 60
    cfg.train.start_epoch = 0
    cfg.train.batch_size = 32
    cfg.train.fixbase_epoch = 0
    cfg.train.open_layers = ["classifier"]
    cfg.train.staged_lr = False
    cfg.train.new_layers = ["classifier"]
    cfg.train.base_lr_mult = 0.1
    cfg.train.lr_scheduler = "single_step"  # also: multi_step, cosine, warmup_multi_step
    cfg.train.stepsize = [20]
    cfg.train.gamma = 0.1
    cfg.train.print_freq = 20
    cfg.train.seed = 1
    # Ours: PyTorch's deterministic algorithms, cuDNN deterministic, no cudnn.benchmark and
    # CUBLAS_WORKSPACE_CONFIG=:4096:8, so that a CUDA run (and its resume) repeats bit for bit;
    # slower on GPUs. False changes none of them (PyTorch's defaults; cudnn.benchmark stays off).
    cfg.train.deterministic = False
    # Ours (speed and memory; none changes the maths beyond numerical precision):
    # off | bf16 | fp16 (fp16 with a gradient scaler) | auto (fp16 with a gradient scaler on
    # every CUDA GPU, as the authors trained; off on the CPU)
    cfg.train.amp = "off"
    cfg.train.gradient_checkpointing = False  # ViT and U-Net blocks recompute activations in backward
    cfg.train.compile = ""  # a torch.compile backend (e.g. inductor) for the Re-ID model and U-Net; '' = off
    # On the CPU, the U-Net's frozen convolutions with few output rows (batch x positions <= 256:
    # the 4x4 and 2x2 latents at batch 8) run as one matrix product instead of oneDNN's kernels.
    cfg.train.cpu_matmul_convolutions = True
    # LoRA's rank-r update added into the frozen layer's output by one in-place matrix product
    # (peft: a product, a scaling and a sum, each a full-width pass); fp32 outside autocast.
    cfg.train.fused_lora = True
    # Under torchrun: the process-group backend ('' = nccl on GPUs, gloo on CPU), how long a
    # rank may wait for the others in a collective (rank 0 evaluates alone while they wait), and
    # how long the processes wait for each other when they start (a missing rank is reported).
    cfg.train.dist_backend = ""
    cfg.train.dist_timeout_minutes = 60.0
    cfg.train.dist_rendezvous_minutes = 5.0

    cfg.sgd = CN()
    cfg.sgd.momentum = 0.9
    cfg.sgd.dampening = 0.0
    cfg.sgd.nesterov = False
    cfg.rmsprop = CN()
    cfg.rmsprop.alpha = 0.99
    cfg.adam = CN()
    cfg.adam.beta1 = 0.9
    cfg.adam.beta2 = 0.999

    cfg.loss = CN()
    cfg.loss.name = "softmax"
    cfg.loss.softmax = CN()
    cfg.loss.softmax.label_smooth = True
    cfg.loss.triplet = CN()
    cfg.loss.triplet.margin = 0.3
    cfg.loss.triplet.weight_t = 1.0
    cfg.loss.triplet.weight_x = 0.0

    cfg.test = CN()
    cfg.test.batch_size = 100
    cfg.test.dist_metric = "euclidean"
    cfg.test.normalize_feature = False
    cfg.test.ranks = [1, 5, 10, 20]
    cfg.test.evaluate = False
    cfg.test.eval_freq = -1
    cfg.test.start_eval = 0
    cfg.test.rerank = False
    cfg.test.visrank = False
    cfg.test.visrank_topk = 10
    # Ours: the split ids evaluated for targets with random splits (iLIDS, PRID, GRID, VIPeR), each in
    # turn, their mean reported; [] = the standard ones (0..9; VIPeR 0, 2, ..., 18: camera A queries).
    cfg.test.split_ids = []

    cfg.dcac = _dcac_section()
    return cfg


def _dcac_section() -> CN:
    dcac = CN()
    # CLIP weights for the clip_vit_* models: an open_clip pretrained tag (``openai``)
    # or a local file (OpenAI's ViT-B-16.pt, an open_clip checkpoint, or a state dict).
    dcac.clip_weights = "openai"
    # Resize interpolation of the Re-ID view in training and in the PCL memory pass; the reference uses bicubic.
    dcac.resize_interpolation = "bicubic"
    # Resize interpolation at test time (evaluation, dcac extract / export / visualize); empty =
    # dcac.resize_interpolation. The reference tests single-source runs bilinearly, multi-source bicubically.
    dcac.test_resize_interpolation = ""
    # Linear warm-up of train.lr_scheduler = warmup_multi_step (paper 5.2: 10 epochs from 0.1x).
    dcac.warmup_epochs = 10
    dcac.warmup_factor = 0.1
    dcac.pcl = CN()
    dcac.pcl.temperature = 0.01  # tau of eq. 6
    dcac.pcl.momentum = 0.2  # gamma of eq. 7: share of the old prototype that is kept
    dcac.pcl.weight = 1.0  # weight of L_pcl in eq. 8
    # Engine dcac: the diffusion branch (paper 4.2-4.4).
    dcac.lambda_dif = 1.0  # lambda of eq. 13
    dcac.finetune = "lora"  # frozen | lora | partial1 | partial2 | full | scratch (Table 5)
    dcac.lora = CN()
    dcac.lora.rank = 8  # r of eq. 9: 8 for Market1501/DukeMTMC-reID/CUHK03-NP, 32 for MSMT17 and multi-source
    dcac.lora.alpha = 1.0  # scale alpha / r = 1 / r, as in eq. 9
    dcac.diffusion = CN()
    # A Hugging Face repo id, a local diffusers folder, an original single-file checkpoint
    # (v1-5-pruned.safetensors / .ckpt), or ``tiny`` (a random tiny model for tests and the demo).
    dcac.diffusion.pretrained = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    # The U-Net copy fine-tuned: False = the non-EMA weights, as the authors (model.diffusion_model.*
    # of v1-5-pruned, the release's unet non_ema variant); True = the EMA weights.
    dcac.diffusion.ema_weights = False
    dcac.diffusion.image_size = 128  # the diffusion view is image_size x image_size
    # Encode each training image's VAE posterior once (kept under data.save_dir) and sample
    # a fresh latent from it every step: the same latent distribution as encoding every step.
    dcac.diffusion.latent_cache = True
    dcac.condition = CN()
    dcac.condition.mode = "correlation"  # correlation (eq. 12) | class | instance (Table 7) | class_weighted (paper text)
    dcac.condition.transform = "none"  # none | silu | bn | mlp (Table 10)
    # tau_c of eq. 12: 0.1 for CUHK03-NP, 0.6 for Market1501 / DukeMTMC-reID, 1.0 for MSMT17 and multi-source.
    dcac.condition.temperature = 1.0
    return dcac


def paper_recipe() -> dict:
    """Section 5.2 of the paper and the reference implementation, as config overrides."""
    return {
        "model": {"name": "clip_vit_b16", "pretrained": True},
        "data": {
            "height": 256,
            "width": 128,
            "transforms": ["random_flip", "pad_crop", "random_erase"],
            "norm_mean": [0.5, 0.5, 0.5],
            "norm_std": [0.5, 0.5, 0.5],
        },
        "sampler": {"train_sampler": "RandomIdentitySampler", "num_instances": 4},
        "train": {
            "optim": "adam",
            "lr": 5e-6,
            "weight_decay": 1e-4,
            "max_epoch": 60,
            "batch_size": 64,
            "lr_scheduler": "warmup_multi_step",
            "stepsize": [30, 50],
            "gamma": 0.1,
            "amp": "auto",  # the reference trains with fp16 autocast and a gradient scaler
            "seed": 1234,  # the reference's (alchemycat_configs/base/model.yaml)
        },
        "loss": {"softmax": {"label_smooth": True}},
        "msmt17": {"train_with_val": True},  # all 32,621 training images (Table 1), as the reference
    }


# --------------------------------------------------------------------------- merging

def _check_keys(overrides: Mapping[str, Any], reference: CN, where: str, valid: Sequence[str], prefix: str = "") -> None:
    """Reject keys the defaults do not have, naming the nearest valid dotted key."""
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        if key not in reference:
            hint = nearest_name(full, valid)
            suggestion = f" Did you mean {hint!r}?" if hint else ""
            raise ConfigError(
                f"Unknown config key {full!r} in {where}.{suggestion} "
                f"Run `dcac config` to list every key."
            )
        if isinstance(reference[key], CN):
            if not isinstance(value, Mapping):
                raise ConfigError(f"Config key {full!r} in {where} is a section; give it sub-keys, not {value!r}.")
            _check_keys(value, reference[key], where, valid, prefix=f"{full}.")


# What a key takes, by the type of its default (yacs checks types, but lets null through and
# names only Python types when it refuses).
_KINDS = {bool: "True or False", int: "a whole number", float: "a number", str: "text ('' for none)",
          list: "a list", tuple: "a list"}


def _checked_value(key: str, value: Any, default: Any, where: str) -> Any:
    """``value`` for config ``key`` whose default is ``default``, as yacs will merge it: a whole
    number where a number is expected becomes a float (yacs would refuse ``lr: 1``); null and
    values of another type are a :class:`ConfigError` naming the key, what it takes and the value."""
    decoded = CN._decode_cfg_value(value)
    kind = _KINDS.get(type(default))
    if kind is None:  # a key without a typed default (None) takes anything
        return value
    if isinstance(default, bool):
        fits = isinstance(decoded, bool)
    elif isinstance(default, float) and isinstance(decoded, int) and not isinstance(decoded, bool):
        return float(decoded)
    elif isinstance(default, (list, tuple)):
        fits = isinstance(decoded, (list, tuple))
    else:
        fits = isinstance(decoded, type(default)) and not isinstance(decoded, bool)
    if fits:
        return value
    empty = "" if isinstance(default, bool) or decoded is not None else \
        f" (an empty value): give it one (its default is {default!r}) or leave the key out"
    raise ConfigError(f"Bad value {where}: {key} takes {kind}, not {value!r}{empty}.")


def _check_types(overrides: Mapping[str, Any], reference: CN, where: str, prefix: str = "") -> dict:
    """``overrides`` with every value checked by :func:`_checked_value` against its default in
    ``reference`` (the keys are known to exist)."""
    checked = {}
    for key, value in overrides.items():
        full, default = f"{prefix}{key}", reference[key]
        if isinstance(default, CN):
            checked[key] = _check_types(value, default, where, prefix=f"{full}.")
        else:
            checked[key] = _checked_value(full, value, default, where)
    return checked


def _all_keys(cfg: CN, prefix: str = "") -> list:
    keys = []
    for key, value in cfg.items():
        if isinstance(value, CN):
            keys.extend(_all_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _default_of(cfg: CN, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _nested(dotted: Sequence[str]) -> dict:
    out: dict = {}
    for key, value in zip(dotted[0::2], dotted[1::2]):
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _merge_dict(cfg: CN, overrides: Mapping[str, Any], where: str) -> None:
    _check_keys(overrides, cfg, where, _all_keys(cfg))
    overrides = _check_types(overrides, cfg, f"in {where}")
    try:
        cfg.merge_from_other_cfg(CN(dict(overrides)))
    except ValueError as err:  # yacs type mismatch
        raise ConfigError(f"Bad value in {where}: {err}") from None


# ------------------------------------------------------------------- config files

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _duplicate_key(node: Optional[yaml.Node], prefix: str = "",
                   walked: Optional[set] = None) -> Optional[Tuple[str, int, int]]:
    """The first key given twice in one mapping of a composed YAML document, as (dotted key, first
    line, second line), 1-based; None if there is none. ``yaml.safe_load`` silently keeps the last,
    so a setting written twice would be half ignored. Merged keys (``<<``) may be overridden, as
    YAML intends; ``walked`` guards against recursive aliases."""
    walked = set() if walked is None else walked
    if not isinstance(node, yaml.MappingNode) or id(node) in walked:
        return None
    walked.add(id(node))
    first_line: dict = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
            continue
        key, line = f"{prefix}{key_node.value}", key_node.start_mark.line + 1
        if key in first_line:
            return key, first_line[key], line
        first_line[key] = line
        found = _duplicate_key(value_node, f"{key}.", walked)
        if found:
            return found
    return None


def _config_text(path: str) -> str:
    """The text of config file ``path``, or a ConfigError saying why it cannot be read as text."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise ConfigError(f"Cannot read config file {path} ({err.strerror or err}).") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"Config file {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                          "name a YAML file, saved as UTF-8.") from None


def _yaml_position(err: yaml.YAMLError) -> str:
    """Where PyYAML found the problem: ``line L, column C`` (1-based), or '' if it does not say."""
    mark = getattr(err, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _parse_config(text: str, path: str) -> dict:
    """The mapping a config file's ``text`` holds; a ConfigError naming ``path`` and the line otherwise."""
    try:
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"Config file {path} is not valid YAML at {_yaml_position(err) or 'an unknown place'}: "
                          f"{problem}. Fix the file there (YAML indents with spaces; quote values holding ': ' "
                          "or '#').") from None
    if duplicate:
        key, first, again = duplicate
        raise ConfigError(f"Config file {path} sets {key!r} twice (lines {first} and {again}); only the last would "
                          "count. Keep one of them.")
    if loaded is None:
        raise ConfigError(f"Config file {path} is empty (or holds only comments). Put KEY: VALUE lines in it, "
                          "or leave out --config-file to use the defaults.")
    if not isinstance(loaded, dict):
        raise ConfigError(f"Config file {path} must hold a YAML mapping of keys, not {type(loaded).__name__}.")
    return loaded


def load_config_file(config_file: str) -> Tuple[str, dict]:
    """(path, settings) of a config file or shipped config name (see
    :func:`~dcac_plugin.shipped.resolve_config`); every way the file can be unusable (a folder,
    unreadable, not UTF-8, not YAML, a key given twice, empty, not a mapping) is a ConfigError."""
    if os.path.isdir(config_file):
        raise ConfigError(f"Config file {config_file} is a folder; name a YAML file (e.g. one in that folder), "
                          "or a shipped config (`dcac configs` lists them).")
    path = resolve_config(config_file)
    return path, _parse_config(_config_text(path), path)


def build_config(
    config_file: Optional[str] = None,
    opts: Sequence[str] = (),
    sources: Optional[Iterable[str]] = None,
    targets: Optional[Iterable[str]] = None,
    root: Optional[str] = None,
    transforms: Optional[Iterable[str]] = None,
) -> CN:
    """The launcher's config: defaults, [paper recipe], file, command-line flags, KEY VALUE pairs.

    ``config_file`` is a path or the name of a shipped config (``single/dcac_market1501_to_msmt17``,
    see :func:`~dcac_plugin.shipped.resolve_config`). Flags and pairs are applied in upstream
    torchreid's order (``reset_config`` then ``merge_from_list``). Unknown keys raise
    :class:`ConfigError` naming the nearest key.
    """
    if len(opts) % 2:
        raise ConfigError(f"Command-line overrides come in KEY VALUE pairs; got an odd list: {list(opts)}")
    file_overrides: dict = {}
    if config_file:
        config_file, file_overrides = load_config_file(config_file)
    cli_overrides = _nested(list(opts))
    cfg = get_default_config()
    engine = str(cli_overrides.get("engine", file_overrides.get("engine", "")))
    if engine in PAPER_ENGINES:
        _merge_dict(cfg, paper_recipe(), "the paper recipe")
    if file_overrides:
        _merge_dict(cfg, file_overrides, config_file)
    if root:
        cfg.data.root = root
    if sources:
        cfg.data.sources = list(sources)
    if targets:
        cfg.data.targets = list(targets)
    if transforms:
        cfg.data.transforms = list(transforms)
    if opts:
        _check_keys(cli_overrides, cfg, "the command line", _all_keys(cfg))
        opts = [item for key, value in zip(opts[0::2], opts[1::2])
                for item in (key, _checked_value(key, value, _default_of(cfg, key), "on the command line"))]
        try:
            cfg.merge_from_list(opts)
        except (ValueError, AssertionError) as err:
            raise ConfigError(f"Bad value on the command line: {err}") from None
    if not cfg.engine:
        cfg.engine = cfg.loss.name
    return cfg


# ------------------------------------------------------------------- torchreid kwargs

def device_kwargs(fn, use_gpu: bool) -> dict:
    """torchreid 0.2.5 takes ``use_gpu=``; newer deep-person-reid takes ``device=``."""
    params = inspect.signature(fn).parameters
    if "device" in params and "use_gpu" not in params:
        return {"device": "cuda" if use_gpu else "cpu"}
    return {"use_gpu": use_gpu}


def imagedata_kwargs(cfg: CN) -> dict:
    return {
        "root": cfg.data.root,
        "sources": list(cfg.data.sources),
        "targets": list(cfg.data.targets),
        "height": cfg.data.height,
        "width": cfg.data.width,
        "transforms": list(cfg.data.transforms),
        "k_tfm": cfg.data.k_tfm,
        "norm_mean": list(cfg.data.norm_mean),
        "norm_std": list(cfg.data.norm_std),
        "split_id": cfg.data.split_id,
        "combineall": cfg.data.combineall,
        "load_train_targets": cfg.data.load_train_targets,
        "batch_size_train": cfg.train.batch_size,
        "batch_size_test": cfg.test.batch_size,
        "workers": cfg.data.workers,
        "num_instances": cfg.sampler.num_instances,
        "num_cams": cfg.sampler.num_cams,
        "num_datasets": cfg.sampler.num_datasets,
        "train_sampler": cfg.sampler.train_sampler,
        "train_sampler_t": cfg.sampler.train_sampler_t,
        "cuhk03_labeled": cfg.cuhk03.labeled_images,
        "cuhk03_classic_split": cfg.cuhk03.classic_split,
        "market1501_500k": cfg.market1501.use_500k_distractors,
    }


def optimizer_kwargs(cfg: CN) -> dict:
    return {
        "optim": cfg.train.optim,
        "lr": cfg.train.lr,
        "weight_decay": cfg.train.weight_decay,
        "momentum": cfg.sgd.momentum,
        "sgd_dampening": cfg.sgd.dampening,
        "sgd_nesterov": cfg.sgd.nesterov,
        "rmsprop_alpha": cfg.rmsprop.alpha,
        "adam_beta1": cfg.adam.beta1,
        "adam_beta2": cfg.adam.beta2,
        "staged_lr": cfg.train.staged_lr,
        "new_layers": list(cfg.train.new_layers),
        "base_lr_mult": cfg.train.base_lr_mult,
    }


def engine_run_kwargs(cfg: CN) -> dict:
    return {
        "save_dir": cfg.data.save_dir,
        "max_epoch": cfg.train.max_epoch,
        "start_epoch": cfg.train.start_epoch,
        "fixbase_epoch": cfg.train.fixbase_epoch,
        "open_layers": list(cfg.train.open_layers),
        "start_eval": cfg.test.start_eval,
        "eval_freq": cfg.test.eval_freq,
        "test_only": cfg.test.evaluate,
        "print_freq": cfg.train.print_freq,
        "dist_metric": cfg.test.dist_metric,
        "normalize_feature": cfg.test.normalize_feature,
        "visrank": cfg.test.visrank,
        "visrank_topk": cfg.test.visrank_topk,
        "use_metric_cuhk03": cfg.cuhk03.use_metric_cuhk03,
        "ranks": list(cfg.test.ranks),
        "rerank": cfg.test.rerank,
    }
