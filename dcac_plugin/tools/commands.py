"""The implementations of ``dcac train``, ``demo``, ``stats`` and ``bench`` (``config`` and
``configs`` need no model: :mod:`dcac_cli.answers`).

The parser and the entry point are :mod:`dcac_cli`; it imports this module only to run one of
these commands.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
from typing import Sequence

from dcac_config.errors import UsageError
from dcac_config.loading import config_from_args
from dcac_config.shipped import demo_config_path


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
    from ..run.launcher import run
    from ..utils.distributed import launched_info

    summary = run(config_from_args(args))
    if launched_info().is_main:
        print(format_results_table([summary]))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    import json

    from ..benchmarks.stats import flops_and_memory_stats, parameter_stats

    # Always the DCAC model: a config for another engine still describes its data and options.
    args.opts = ["engine", "dcac"] + list(args.opts or [])
    cfg = config_from_args(args)
    stats = parameter_stats(cfg, args.num_classes)
    if not args.parameters_only:
        stats.update(flops_and_memory_stats(cfg, args.num_classes, batch_size=args.batch_size, amp=args.amp,
                                            gradient_checkpointing=args.gradient_checkpointing,
                                            latent_cache=not args.no_latent_cache, gpu_memory_gb=args.gpu_memory_gb))
    print(json.dumps(stats, indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    if args.what == "train":
        from ..benchmarks.train_bench import Setting, run_train_benchmark, run_train_settings

        options = dict(batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, device=args.device,
                       rank=args.rank, gradient_checkpointing=args.gradient_checkpointing, opts=args.opts or [],
                       schedule=args.schedule, plan=args.plan, json_out=args.json_out)
        if args.settings:
            if args.amp != "off" or args.no_latent_cache:
                raise UsageError("--settings names each setting's precision and latents; leave out --amp and "
                                 "--no-latent-cache")
            figures = run_train_settings([Setting.parse(text) for text in args.settings], **options)
            print(json.dumps(figures, indent=2))
            failed = [name for name, entry in figures["settings"].items() if "error" in entry]
            return 1 if failed else 0
        figures = run_train_benchmark(amp=args.amp, latent_cache=not args.no_latent_cache, **options)
    else:
        from ..benchmarks.eval_bench import run_eval_benchmark

        figures = run_eval_benchmark(include_market=not args.skip_market, include_msmt=not args.skip_msmt,
                                     torchreid_reference=not args.no_reference, device=args.device)
    print(json.dumps(figures, indent=2))
    return 0


def earlier_demo_run(cfg) -> bool:
    """Whether ``cfg.data.save_dir`` holds the demo's own earlier run of this engine (its
    config.yaml names the same engine, model and synthetic datasets). ``dcac demo`` run again
    replaces it; a folder holding anything else is refused like any run's."""
    import yaml

    from ..run.launcher import run_config_path

    try:
        with open(run_config_path(cfg.data.save_dir), encoding="utf-8") as handle:
            earlier = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return False
    if not isinstance(earlier, dict):
        return False
    data, model = earlier.get("data") or {}, earlier.get("model") or {}
    return ((earlier.get("engine"), model.get("name"), data.get("sources"), data.get("targets"))
            == (cfg.engine, cfg.model.name, list(cfg.data.sources), list(cfg.data.targets)))


def cmd_demo(args: argparse.Namespace) -> int:
    from dcac_config.loading import build_config

    from ..run.launcher import run

    summaries = []
    for name in args.engines:
        path = demo_config_path(name)
        opts = ["data.root", args.root, "data.save_dir", osp.join(args.save_dir, name)] + list(args.opts or [])
        print(f"\n===== demo: {name} ({path}) =====", flush=True)
        cfg = build_config(path, opts)
        if earlier_demo_run(cfg):
            cfg.data.overwrite = True
        summaries.append(run(cfg))
    table = format_results_table(summaries)
    os.makedirs(args.save_dir, exist_ok=True)
    with open(osp.join(args.save_dir, "demo_results.md"), "w", encoding="utf-8") as handle:
        handle.write(table + "\n")
    print("\nDemo results (train on synthetic_a, test on unseen synthetic_b):\n" + table)
    print(f"\nLogs, checkpoints and results.json per run under {args.save_dir}/<run>/")
    return 0
