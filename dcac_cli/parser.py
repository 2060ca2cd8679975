"""The whole ``dcac`` argument tree, built from the standard library alone.

``--help`` and argument errors must answer at once, and importing ``dcac_plugin`` takes
seconds (it registers into torchreid: torch, diffusers, open_clip). So no parser here
imports it: each command names its implementation as ``handler`` ("module:function"),
which :func:`dcac_cli.dispatch.main` imports only after parsing.
"""
from __future__ import annotations

import argparse
import os.path as osp

from .base import PROG, DcacArgumentParser, HelpFormatter
from .choices import AMP_CHOICES, DEMO_ENGINES, ENGINE_SUMMARIES
from .runs import add_experiments_parser, add_export_parser, add_extract_parser, add_visualize_parser

CONFIG_FILE_HELP = ("YAML config: a path, or the name of a shipped config such as single/dcac_market1501_to_msmt17 "
                    "(`dcac configs` lists them)")
TRAIN_DESCRIPTION = """\
Train and/or evaluate a Re-ID model from a torchreid-style YAML config, with upstream
torchreid's scripts/main.py flags (--config-file, -s, -t, --transforms, --root) and
KEY VALUE overrides of any config key after them. Logs, checkpoints, the exported encoder
and results.json go to data.save_dir."""
TRAIN_EXAMPLES = """\
examples:
  dcac train --config-file single/dcac_market1501_to_msmt17 --root /data/reid data.save_dir log/m2ms
  dcac train --config-file single/dcac_market1501_to_msmt17 --root /data/reid \\
      test.evaluate True model.load_weights log/m2ms/model/model.pth.tar-60"""


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of upstream torchreid's scripts/main.py."""
    parser.add_argument("--config-file", type=str, default="", help=CONFIG_FILE_HELP)
    parser.add_argument("-s", "--sources", type=str, nargs="+", help="source datasets (delimited by space)")
    parser.add_argument("-t", "--targets", type=str, nargs="+", help="target datasets (delimited by space)")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation")
    parser.add_argument("--root", type=str, default="", help="path to data root")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="modify config options with KEY VALUE pairs, e.g. train.max_epoch 10")


def _engines_epilog() -> str:
    width = max(len(name) for name in ENGINE_SUMMARIES)
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, what in ENGINE_SUMMARIES.items())
    return f"engines (config key `engine`; empty: loss.name, as upstream):\n{rows}\n\n{TRAIN_EXAMPLES}"


def _add_train_parsers(sub: "argparse._SubParsersAction") -> None:
    """``train``, ``config``, ``stats``, ``configs``: the commands that read a config."""
    train = sub.add_parser("train", help="train and/or evaluate from a torchreid-style YAML config",
                           description=TRAIN_DESCRIPTION, epilog=_engines_epilog(), formatter_class=HelpFormatter)
    add_launcher_arguments(train)
    train.set_defaults(handler="dcac_plugin.cli:cmd_train")

    config = sub.add_parser("config", help="print the merged config (defaults, file, overrides)",
                            formatter_class=HelpFormatter)
    add_launcher_arguments(config)
    config.set_defaults(handler="dcac_plugin.cli:cmd_config")

    stats = sub.add_parser("stats", help="parameter counts per component (real-size architectures, no downloads)",
                           formatter_class=HelpFormatter)
    add_launcher_arguments(stats)
    stats.add_argument("--num-classes", type=int, default=None,
                       help="training identities (default: the standard datasets' counts for data.sources)")
    stats.set_defaults(handler="dcac_plugin.cli:cmd_stats")

    configs = sub.add_parser("configs", help="list the shipped configs and run lists by name",
                             description="The configs shipped with the package (single, multi, ablations, demo) "
                                         "and the run lists of `dcac experiments`, by the names every --config-file "
                                         "takes.", formatter_class=HelpFormatter)
    configs.add_argument("filter", nargs="?", default="", help="only names containing this text, e.g. msmt17")
    configs.set_defaults(handler="dcac_plugin.cli:cmd_configs")


def _add_bench_parser(sub: "argparse._SubParsersAction") -> None:
    bench = sub.add_parser("bench", help="benchmarks that print JSON figures", formatter_class=HelpFormatter)
    bench_sub = bench.add_subparsers(dest="what", required=True)
    bench_train = bench_sub.add_parser("train", help="median step time and peak memory, baseline vs dcac "
                                                     "(real-size architectures, random init)",
                                       formatter_class=HelpFormatter)
    bench_train.add_argument("--batch-size", type=int, default=8)
    bench_train.add_argument("--steps", type=int, default=5, help="measured steps (after warm-up)")
    bench_train.add_argument("--warmup", type=int, default=2)
    bench_train.add_argument("--amp", default="off", choices=list(AMP_CHOICES),
                             help="auto: bf16 on GPUs that support it, else fp16 on a GPU, off on the CPU")
    bench_train.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    bench_train.add_argument("--rank", type=int, default=8, help="LoRA rank")
    bench_train.add_argument("--no-latent-cache", action="store_true", help="encode the diffusion view every step")
    bench_train.add_argument("--gradient-checkpointing", action="store_true")
    bench_eval = bench_sub.add_parser("eval", help="ranking metrics: Market-1501 size vs torchreid, MSMT17 size "
                                                   "end to end from features", formatter_class=HelpFormatter)
    bench_eval.add_argument("--skip-market", action="store_true", help="skip the torchreid comparison (about 90 s with the PyPI build)")
    bench_eval.add_argument("--skip-msmt", action="store_true")
    bench.set_defaults(handler="dcac_plugin.cli:cmd_bench")


def _add_demo_parser(sub: "argparse._SubParsersAction") -> None:
    demo = sub.add_parser("demo", help="the embedded synthetic demo: train on synthetic_a, test on synthetic_b, "
                                       "with tiny random-init models on CPU", formatter_class=HelpFormatter)
    demo.add_argument("--root", default="reid-data", help="data root; the synthetic datasets are written here once")
    demo.add_argument("--save-dir", default=osp.join("log", "demo"), help="logs, checkpoints and results")
    demo.add_argument("--engines", nargs="+", default=list(DEMO_ENGINES), choices=list(DEMO_ENGINES))
    demo.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides applied to every demo run")
    demo.set_defaults(handler="dcac_plugin.cli:cmd_demo")


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
