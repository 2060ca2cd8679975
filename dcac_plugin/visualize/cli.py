"""``dcac visualize {ranked,gradcam,curves} RUN``: the pictures of :mod:`dcac_plugin.visualize` from a shell
(the parser is in :mod:`dcac_cli.runs`)."""
from __future__ import annotations

import argparse
import os.path as osp

from ..errors import UsageError


def default_out_dir(run: str) -> str:
    """``<run>/visualize``; for a checkpoint file, beside the run's ``config.yaml`` when it has one."""
    from ..inference import find_run_config

    if osp.isdir(run):
        return osp.join(run, "visualize")
    config = find_run_config(run)
    return osp.join(osp.dirname(config) if config else osp.dirname(osp.abspath(run)), "visualize")


def cmd_visualize(args: argparse.Namespace) -> int:
    """Run one ``visualize`` action and print the files it wrote."""
    out_dir = default_out_dir(args.run)
    try:
        if args.action == "ranked":
            from .ranked import ranked_results_for_run

            out = args.out or osp.join(out_dir, f"ranked_{args.dataset}" if args.dataset else "ranked")
            written = ranked_results_for_run(args.run, out, dataset=args.dataset, topk=args.topk,
                                             max_queries=args.max_queries)
        elif args.action == "gradcam":
            from .gradcam import save_gradcam_grid

            out = args.out or osp.join(out_dir, f"gradcam_{args.class_index}.png")
            written = [save_gradcam_grid(args.run, args.images, args.class_index, out)]
        else:
            from .curves import plot_training_curves

            written = plot_training_curves(args.run, args.out or out_dir)
    except (FileNotFoundError, ValueError) as err:
        # Missing event files or images, a class outside the classifier: input problems, not bugs.
        raise UsageError(str(err)) from None
    for path in written:
        print(path)
    return 0


__all__ = ["cmd_visualize", "default_out_dir"]
