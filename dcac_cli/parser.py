"""The whole ``dcac`` argument tree, built from the standard library alone.

``--help`` and argument errors must answer at once, and importing ``dcac_plugin`` takes
seconds (it registers into torchreid: torch, diffusers, open_clip). So no parser here
imports it: each command names its implementation as ``handler`` ("module:function"),
which :func:`dcac_cli.dispatch.main` imports only after parsing.
"""
from __future__ import annotations

import argparse
import os.path as osp

from .base import (PROG, DcacArgumentParser, HelpFormatter, bench_setting, gpu_memory_gb, identity_count,
                   non_negative_int, positive_int, training_batch_size)
from .choices import AMP_CHOICES, BENCH_SCHEDULES, DEMO_RUN_SUMMARIES, DEMO_RUNS, ENGINE_SUMMARIES
from .overrides import ListThenOverrides, add_overrides_argument
from .runs import add_experiments_parser, add_export_parser, add_extract_parser, add_visualize_parser

CONFIG_FILE_HELP = ("YAML config: a path, or the name of a shipped config such as single/dcac_market1501_to_msmt17 "
                    "(`dcac configs` lists them)")
LIST_HELP = "; KEY VALUE overrides may follow, from the first word that names a config key"
OPTS_HELP = " (after the options, or after a list flag's words; a -- before them is allowed)"
TRAIN_DESCRIPTION = """\
Train and/or evaluate a Re-ID model from a torchreid-style YAML config, with upstream
torchreid's scripts/main.py flags (--config-file, -s, -t, --transforms, --root) and
KEY VALUE overrides of any config key after them. Logs, checkpoints, the exported encoder
and results.json go to data.save_dir."""
STATS_DESCRIPTION = """\
Print, as JSON, for the real-size architectures a config describes (CLIP ViT-B/16, SD v1.5
U-Net with its adapters, VAE), built on the meta device without weights or a GPU:
parameters (total, trainable) per component; forward TFLOPs of the baseline step, the dcac
step with the VAE encoding every step and with the latent cache, and of inference (counted
by torch.utils.flop_counter); and the planned peak GPU memory of one training step of each
engine and of inference at --batch-size, --amp, with or without --gradient-checkpointing
and the latent cache (live tensor bytes, as torch.cuda.max_memory_allocated counts them)."""
TRAIN_EXAMPLES = """\
examples:
  dcac train --config-file single/dcac_market1501_to_msmt17 --root /data/reid data.save_dir log/m2ms
  dcac train --config-file single/dcac_market1501_to_msmt17 --root /data/reid \\
      test.evaluate True model.load_weights log/m2ms/model/model.pth.tar-60"""


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of upstream torchreid's scripts/main.py."""
    parser.add_argument("--config-file", type=str, default="", help=CONFIG_FILE_HELP)
    parser.add_argument("-s", "--sources", action=ListThenOverrides, metavar="DATASET",
                        help="source datasets (delimited by space)" + LIST_HELP)
    parser.add_argument("-t", "--targets", action=ListThenOverrides, metavar="DATASET",
                        help="target datasets (delimited by space)" + LIST_HELP)
    parser.add_argument("--transforms", action=ListThenOverrides, metavar="TRANSFORM",
                        help="data augmentation" + LIST_HELP)
    parser.add_argument("--root", type=str, default="", help="path to data root")
    add_overrides_argument(parser, "modify config options with KEY VALUE pairs, e.g. train.max_epoch 10" + OPTS_HELP)


def _engines_epilog() -> str:
    width = max(len(name) for name in ENGINE_SUMMARIES)
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, what in ENGINE_SUMMARIES.items())
    return f"engines (config key `engine`; empty: loss.name, as upstream):\n{rows}\n\n{TRAIN_EXAMPLES}"


def _add_train_parsers(sub: "argparse._SubParsersAction") -> None:
    """``train``, ``config``, ``stats``, ``configs``: the commands that read a config."""
    train = sub.add_parser("train", help="train and/or evaluate from a torchreid-style YAML config",
                           description=TRAIN_DESCRIPTION, epilog=_engines_epilog(), formatter_class=HelpFormatter)
    add_launcher_arguments(train)
    train.set_defaults(handler="dcac_plugin.tools.commands:cmd_train")

    config = sub.add_parser("config", help="print the merged config (defaults, file, overrides)",
                            formatter_class=HelpFormatter)
    add_launcher_arguments(config)
    config.set_defaults(handler="dcac_cli.answers:cmd_config")

    stats = sub.add_parser("stats", help="parameter counts, forward FLOPs and planned GPU memory (real-size "
                                         "architectures, no weights, no GPU)",
                           description=STATS_DESCRIPTION, formatter_class=HelpFormatter)
    add_launcher_arguments(stats)
    stats.add_argument("--num-classes", type=identity_count, default=None,
                       help="training identities (default: the standard datasets' counts for data.sources)")
    stats.add_argument("--batch-size", type=training_batch_size, default=64,
                       help="images per step for the FLOPs and the memory plan (the paper's Table 6: 64)")
    stats.add_argument("--amp", default="fp16", choices=[mode for mode in AMP_CHOICES if mode != "auto"],
                       help="precision of the planned step: autocast fp16 (the paper's), bf16, or off (fp32)")
    stats.add_argument("--gradient-checkpointing", action="store_true",
                       help="plan the step with gradient checkpointing on the ViT and U-Net blocks")
    stats.add_argument("--no-latent-cache", action="store_true",
                       help="plan the dcac step with the VAE encoding every step (the paper's setting) instead of "
                            "looking up cached posteriors (dcac train's default)")
    stats.add_argument("--gpu-memory-gb", type=gpu_memory_gb, default=24.0,
                       help="GPU memory the planned peaks are compared with (fits_gpu)")
    stats.add_argument("--parameters-only", action="store_true",
                       help="only the parameter counts: skip the FLOP count and the memory plan (about 15 s)")
    stats.set_defaults(handler="dcac_plugin.tools.commands:cmd_stats")

    configs = sub.add_parser("configs", help="list the shipped configs and run lists by name",
                             description="The configs shipped with the package (single, multi, ablations, toolbox, demo) "
                                         "and the run lists of `dcac experiments`, by the names every --config-file "
                                         "takes.", formatter_class=HelpFormatter)
    configs.add_argument("filter", nargs="?", default="", help="only names containing this text, e.g. msmt17")
    configs.set_defaults(handler="dcac_cli.answers:cmd_configs")


def _add_bench_parser(sub: "argparse._SubParsersAction") -> None:
    bench = sub.add_parser("bench", help="benchmarks that print JSON figures", formatter_class=HelpFormatter)
    bench_sub = bench.add_subparsers(dest="what", required=True)
    bench_train = bench_sub.add_parser("train", help="median step time, peak memory and TFLOP/s (FLOPs counted on "
                                                     "the meta device), baseline vs dcac (real-size architectures, "
                                                     "random init)",
                                       formatter_class=HelpFormatter)
    bench_train.add_argument("--batch-size", type=training_batch_size, default=8,
                             help="images per step; the steps' memory is planned first and a batch the device "
                                  "cannot hold is refused before any process starts")
    bench_train.add_argument("--steps", type=positive_int, default=5, help="measured steps (after warm-up)")
    bench_train.add_argument("--warmup", type=non_negative_int, default=2)
    bench_train.add_argument("--amp", default="off", choices=list(AMP_CHOICES),
                             help="auto: as train.amp auto resolves it for the device")
    bench_train.add_argument("--settings", nargs="+", type=bench_setting, metavar="AMP:LATENTS", default=None,
                             help="several settings in one run, each AMP:cache (latents drawn from cached VAE "
                                  "posteriors) or AMP:encode (the VAE encodes every step, as the paper's Table 6), "
                                  "e.g. --settings fp16:encode fp16:cache bf16:cache; the baseline is measured once "
                                  "per precision and FLOPs counted once per step; instead of --amp and "
                                  "--no-latent-cache")
    bench_train.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    bench_train.add_argument("--rank", type=positive_int, default=8, help="LoRA rank")
    bench_train.add_argument("--no-latent-cache", action="store_true", help="encode the diffusion view every step")
    bench_train.add_argument("--gradient-checkpointing", action="store_true")
    bench_train.add_argument("--plan", action="store_true",
                             help="also plan each step's peak memory as `dcac stats` does (meta device) and set it "
                                  "beside the measured peak")
    bench_train.add_argument("--json-out", metavar="FILE", default=None,
                             help="also write the figures there, rewritten after every measurement")
    bench_train.add_argument("--schedule", choices=list(BENCH_SCHEDULES), default=None,
                             help="turns: both engines' processes built first, then one step each in turn (the "
                                  "default on the CPU: a shared host's changing load falls on both alike; needs "
                                  "both steps' memory at once); sequential: one engine's steps, then the other's "
                                  "(the default on a GPU)")
    add_overrides_argument(bench_train, "KEY VALUE config overrides for both engines' steps, e.g. "
                                        "train.cpu_matmul_convolutions False (after the options; a -- before them "
                                        "is allowed)")
    bench_eval = bench_sub.add_parser("eval", help="ranking metrics: Market-1501 size vs torchreid, MSMT17 size "
                                                   "end to end from features", formatter_class=HelpFormatter)
    bench_eval.add_argument("--skip-market", action="store_true", help="skip the torchreid comparison (its python path takes about 90 s; its Cython path, where built, a few s)")
    bench_eval.add_argument("--skip-msmt", action="store_true")
    bench_eval.add_argument("--no-reference", action="store_true",
                            help="skip torchreid's reference timings (its python path runs on the CPU for about a "
                                 "minute); on a GPU our result is still checked against ours on the CPU")
    bench_eval.add_argument("--device", default="cpu",
                            help="cpu or cuda: where our ranking runs (the Market-size distance matrix, the MSMT-size "
                                 "features); torchreid's reference always runs on the CPU")
    bench.set_defaults(handler="dcac_plugin.tools.commands:cmd_bench")


def _add_demo_parser(sub: "argparse._SubParsersAction") -> None:
    demo = sub.add_parser("demo", help="the embedded synthetic demo: train on synthetic_a, test on synthetic_b, "
                                       "with tiny random-init models on CPU", formatter_class=HelpFormatter)
    demo.add_argument("--root", default="reid-data", help="data root; the synthetic datasets are written here once")
    demo.add_argument("--save-dir", default=osp.join("log", "demo"), help="logs, checkpoints and results")
    runs = "; ".join(f"{name}: {what}" for name, what in DEMO_RUN_SUMMARIES.items())
    demo.add_argument("--engines", action=ListThenOverrides, names=DEMO_RUNS, default=list(DEMO_RUNS),
                      metavar="RUN", help=f"demo runs to do, in this order ({runs})" + LIST_HELP)
    add_overrides_argument(demo, "KEY VALUE overrides applied to every demo run" + OPTS_HELP)
    demo.set_defaults(handler="dcac_plugin.tools.commands:cmd_demo")


def build_parser() -> argparse.ArgumentParser:
    """The ``dcac`` parser with every sub-command; each parsed command line has a ``handler``."""
    parser = DcacArgumentParser(prog=PROG, description="DCAC Re-ID on torchreid",
                                epilog="Every command takes --help. Usage errors exit with status 2.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parsers(sub)
    _add_bench_parser(sub)
    add_experiments_parser(sub)
    add_extract_parser(sub)
    add_export_parser(sub)
    add_visualize_parser(sub)
    _add_demo_parser(sub)
    return parser
