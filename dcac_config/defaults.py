"""The configuration's keys and defaults: torchreid's, plus ``engine`` and a ``dcac`` section.

A config written for upstream torchreid merges unchanged and means the same: every
upstream key keeps its upstream default. Choosing ``engine: baseline`` or
``engine: dcac`` starts instead from the paper's recipe (DCAC paper, section 5.2,
:func:`paper_recipe`), so a short YAML file reproduces the paper; any key the file sets still wins.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

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


__all__ = ["PAPER_ENGINES", "get_default_config", "paper_recipe"]
