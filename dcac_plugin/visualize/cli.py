"""``dcac visualize {ranked,gradcam,curves} RUN``: the pictures of :mod:`dcac_plugin.visualize` from a shell."""
from __future__ import annotations

import argparse
import os.path as osp
import sys


def default_out_dir(run: str) -> str:
    """``<run>/visualize``; for a checkpoint file, beside the run's ``config.yaml`` when it has one."""
    from ..inference import find_run_config

    if osp.isdir(run):
        return osp.join(run, "visualize")
    config = find_run_config(run)
    return osp.join(osp.dirname(config) if config else osp.dirname(osp.abspath(run)), "visualize")


def add_visualize_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``visualize`` and its actions to the ``dcac`` sub-command parsers."""
    parser = subparsers.add_parser("visualize", help="ranked results, GradCAM maps and training curves of a run")
    actions = parser.add_subparsers(dest="action", required=True)
    formatter = argparse.ArgumentDefaultsHelpFormatter

    ranked = actions.add_parser("ranked", formatter_class=formatter,
                                help="each query beside its top-k gallery matches (green right, red wrong)")
    ranked.add_argument("run", help="run directory or checkpoint")
    ranked.add_argument("--dataset", default=None, help="test dataset (default: the run's first target)")
    ranked.add_argument("--topk", type=int, default=10)
    ranked.add_argument("--max-queries", type=int, default=20)
    ranked.add_argument("--out", default=None, help="output folder (default: <run>/visualize/ranked[_<dataset>])")

    cam = actions.add_parser("gradcam", formatter_class=formatter,
                             help="GradCAM maps of images under one identity's class (paper Fig. 3)")
    cam.add_argument("run", help="run directory or checkpoint (with the ID classifier)")
    cam.add_argument("images", nargs="+", help="image files")
    cam.add_argument("--class-index", type=int, required=True, help="training identity (classifier row) to explain")
    cam.add_argument("--out", default=None, help="output PNG (default: <run>/visualize/gradcam_<class>.png)")

    curves = actions.add_parser("curves", formatter_class=formatter,
                                help="loss, learning-rate and mAP/Rank-1 curves from the run's TensorBoard events")
    curves.add_argument("run", help="run directory (holding events.out.tfevents.*)")
    curves.add_argument("--out", default=None, help="output folder (default: <run>/visualize)")

    parser.set_defaults(func=cmd_visualize)
    return parser


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
        print(f"dcac visualize: error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


__all__ = ["add_visualize_parser", "cmd_visualize", "default_out_dir"]
