"""The ``dcac`` command: ``train``, ``demo``, ``config``, ``stats``, ``bench``, ``experiments``, ``extract``,
``export``, ``visualize``."""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from typing import List, Optional, Sequence

DEMO_ENGINES = ("softmax", "baseline", "dcac")
CONFIG_DIR = osp.join(osp.dirname(osp.abspath(__file__)), "configs")


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of upstream torchreid's scripts/main.py."""
    parser.add_argument("--config-file", type=str, default="", help="path to a YAML config file")
    parser.add_argument("-s", "--sources", type=str, nargs="+", help="source datasets (delimited by space)")
    parser.add_argument("-t", "--targets", type=str, nargs="+", help="target datasets (delimited by space)")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation")
    parser.add_argument("--root", type=str, default="", help="path to data root")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="modify config options with KEY VALUE pairs, e.g. train.max_epoch 10")


def config_from_args(args: argparse.Namespace):
    from .config import build_config

    return build_config(args.config_file or None, args.opts or [], sources=args.sources, targets=args.targets,
                        root=args.root or None, transforms=args.transforms)


def demo_config_path(engine: str) -> str:
    return osp.join(CONFIG_DIR, f"demo_{engine}.yaml")


def format_results_table(summaries: Sequence[dict]) -> str:
    """A Markdown table: engine, model, source -> target, mAP, Rank-1 (percent)."""
    lines = ["| engine | model | source -> target | mAP | Rank-1 |", "|---|---|---|---:|---:|"]
    for summary in summaries:
        source = "+".join(summary["sources"])
        for target, metrics in summary["results"].items():
            lines.append(f"| {summary['engine']} | {summary['model']} | {source} -> {target} | "
                         f"{100 * metrics['mAP']:.1f} | {100 * metrics['rank1']:.1f} |")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from .launcher import run

    from .distributed import launched_info

    summary = run(config_from_args(args))
    if launched_info().is_main:
        print(format_results_table([summary]))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(config_from_args(args).dump())
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    import json

    from .stats import parameter_stats

    # Always the DCAC model: a config for another engine still describes its data and options.
    args.opts = ["engine", "dcac"] + list(args.opts or [])
    print(json.dumps(parameter_stats(config_from_args(args), args.num_classes), indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    if args.what == "train":
        from .benchmarks.train_bench import run_train_benchmark

        figures = run_train_benchmark(batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, amp=args.amp,
                                      device=args.device, latent_cache=not args.no_latent_cache, rank=args.rank,
                                      gradient_checkpointing=args.gradient_checkpointing)
    else:
        from .benchmarks.eval_bench import run_eval_benchmark

        figures = run_eval_benchmark(include_market=not args.skip_market, include_msmt=not args.skip_msmt)
    print(json.dumps(figures, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .config import build_config
    from .launcher import run

    summaries = []
    for engine in args.engines:
        path = demo_config_path(engine)
        if not osp.isfile(path):
            raise SystemExit(f"No demo config for engine {engine!r}; available: {', '.join(DEMO_ENGINES)}")
        opts = ["data.root", args.root, "data.save_dir", osp.join(args.save_dir, engine)] + list(args.opts or [])
        print(f"\n===== demo: engine {engine} ({path}) =====", flush=True)
        summaries.append(run(build_config(path, opts)))
    table = format_results_table(summaries)
    os.makedirs(args.save_dir, exist_ok=True)
    with open(osp.join(args.save_dir, "demo_results.md"), "w", encoding="utf-8") as handle:
        handle.write(table + "\n")
    print("\nDemo results (train on synthetic_a, test on unseen synthetic_b):\n" + table)
    print(f"\nLogs, checkpoints and results.json per engine under {args.save_dir}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcac", description="DCAC Re-ID on torchreid")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train and/or evaluate from a torchreid-style YAML config",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_launcher_arguments(train)
    train.set_defaults(func=cmd_train)

    config = sub.add_parser("config", help="print the merged config (defaults, file, overrides)")
    add_launcher_arguments(config)
    config.set_defaults(func=cmd_config)

    stats = sub.add_parser("stats", help="parameter counts per component (real-size architectures, no downloads)")
    add_launcher_arguments(stats)
    stats.add_argument("--num-classes", type=int, default=None,
                       help="training identities (default: the standard datasets' counts for data.sources)")
    stats.set_defaults(func=cmd_stats)

    from .performance import AMP_CHOICES

    bench = sub.add_parser("bench", help="benchmarks that print JSON figures",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bench_sub = bench.add_subparsers(dest="what", required=True)
    bench_train = bench_sub.add_parser("train", help="median step time and peak memory, baseline vs dcac "
                                                     "(real-size architectures, random init)",
                                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
                                                   "end to end from features")
    bench_eval.add_argument("--skip-market", action="store_true", help="skip the torchreid comparison (about 70 s)")
    bench_eval.add_argument("--skip-msmt", action="store_true")
    bench.set_defaults(func=cmd_bench)

    from .experiments import add_experiments_parser
    from .export import add_export_parser
    from .extract import add_extract_parser
    from .visualize.cli import add_visualize_parser

    add_experiments_parser(sub)
    add_extract_parser(sub)
    add_export_parser(sub)
    add_visualize_parser(sub)

    demo = sub.add_parser("demo", help="the embedded synthetic demo: train on synthetic_a, test on synthetic_b, "
                                       "with tiny random-init models on CPU",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--root", default="reid-data", help="data root; the synthetic datasets are written here once")
    demo.add_argument("--save-dir", default=osp.join("log", "demo"), help="logs, checkpoints and results")
    demo.add_argument("--engines", nargs="+", default=list(DEMO_ENGINES), choices=list(DEMO_ENGINES))
    demo.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides applied to every demo run")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import dcac_plugin  # noqa: F401  (registers models, datasets, engines)

    try:
        return args.func(args)
    except user_errors() as err:
        print(f"dcac: error: {err}", file=sys.stderr)
        return 2


def user_errors() -> tuple:
    """Errors caused by input (config, data, weights, checkpoints, a diverging run): their
    messages name the problem and the fix, so they end the command without a traceback."""
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.images import ImageReadError
    from .data.layouts import DatasetLayoutError
    from .diffusion import DiffusionWeightsError
    from .engines.common import NonFiniteLossError
    from .models.clip_reid import ClipWeightsError

    return (ConfigError, CheckpointError, ClipWeightsError, DiffusionWeightsError, DatasetLayoutError, ImageReadError,
            NonFiniteLossError)


if __name__ == "__main__":
    sys.exit(main())
