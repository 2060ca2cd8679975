"""``dcac visualize {ranked,gradcam,curves} RUN``: the pictures of :mod:`dcac_plugin.tools.visualize` from a shell
(the parser is in :mod:`dcac_cli.runs`)."""
from __future__ import annotations

import argparse
import os.path as osp

from dcac_config.errors import UsageError


def default_out_dir(run: str) -> str:
    """``<run>/visualize``; for a checkpoint file, beside the run's ``config.yaml`` when it has one."""
    from ..inference import find_run_config

    if osp.isdir(run):
        return osp.join(run, "visualize")
    config = find_run_config(run)
    return osp.join(osp.dirname(config) if config else osp.dirname(osp.abspath(run)), "visualize")


def default_output(args: argparse.Namespace) -> str:
    """Where an action writes without ``--out``: a folder for ranked and curves, a PNG for gradcam."""
    out_dir = default_out_dir(args.run)
    if args.action == "ranked":
        return osp.join(out_dir, f"ranked_{args.dataset}" if args.dataset else "ranked")
    if args.action == "gradcam":
        return osp.join(out_dir, f"gradcam_{args.class_index}.png")
    return out_dir


def check_outputs(action: str, out: str, overwrite: bool) -> None:
    """Before any work: ranked pictures are named after their queries, so their folder must
    hold nothing yet; gradcam writes one file, curves three of known names."""
    from ..outputs import check_output_files, check_output_folder
    from .curves import CURVE_FILES

    if action == "ranked":
        check_output_folder(out, overwrite, "--out")
    elif action == "gradcam":
        check_output_files([out], overwrite, "--out")
    else:
        check_output_files([osp.join(out, name) for name in CURVE_FILES], overwrite, "--out")


def cmd_visualize(args: argparse.Namespace) -> int:
    """Run one ``visualize`` action and print the files it wrote."""
    out = args.out or default_output(args)
    check_outputs(args.action, out, args.overwrite)
    try:
        if args.action == "ranked":
            from .ranked import ranked_results_for_run

            written = ranked_results_for_run(args.run, out, dataset=args.dataset, topk=args.topk,
                                             max_queries=args.max_queries)
        elif args.action == "gradcam":
            from .gradcam import save_gradcam_grid

            written = [save_gradcam_grid(args.run, args.images, args.class_index, out)]
        else:
            from .curves import plot_training_curves

            written = plot_training_curves(args.run, out)
    except (FileNotFoundError, ValueError) as err:
        # Missing event files or images, a class outside the classifier: input problems, not bugs.
        raise UsageError(str(err)) from None
    for path in written:
        print(path)
    return 0


__all__ = ["cmd_visualize", "default_out_dir", "default_output"]
