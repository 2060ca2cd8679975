"""The parsers of the commands that work on runs: ``experiments`` (run lists) and ``extract``,
``export``, ``visualize`` (a trained run). Their implementations are the ``cmd_*`` functions
named in each parser's ``handler`` default, imported only when the command runs."""
from __future__ import annotations

import argparse
import os.path as osp

from .base import HelpFormatter, non_negative_int, positive_int
from .choices import RUN_LISTS

RUN_HELP = "run directory (config.yaml + encoder.safetensors or model/) or checkpoint file"
OVERWRITE_HELP = "replace existing output files (without it, a command that would overwrite one stops before any work)"
TRAINED_CONFIG_HELP = ("config the model was trained with, a path or a shipped config's name "
                       "(default: the run's config.yaml)")


def add_experiments_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """``dcac experiments``: run lists one after another, then the results beside the paper's."""
    parser = subparsers.add_parser(
        "experiments", help="run lists of configs one after another (skip done runs, resume interrupted ones) "
                            "and tabulate the results beside the paper's",
        description="Options go before the run lists; KEY VALUE overrides for every run go after them.",
        epilog="Exit status: 0 when every run finished; 1 when a run failed under --keep-going (a failed run, "
               "not a usage error; the tables are written all the same); 2 on a usage error.",
        formatter_class=HelpFormatter)
    parser.add_argument("lists_or_configs", nargs="+",
                        help="run lists (.txt: one config path a line, relative to the list), configs (.yaml), or "
                             "the names of shipped ones: the paper's run lists " + " ".join(RUN_LISTS)
                             + " and the configs `dcac configs` lists")
    parser.add_argument("--out", default=osp.join("log", "experiments"),
                        help="each run goes to <out>/<config stem>; results.md and results.csv go here")
    parser.add_argument("--root", default="", help="data root for every run (data.root)")
    parser.add_argument("--keep-going", action="store_true", help="record a failed run and go on with the next")
    parser.add_argument("--collect-only", action="store_true", help="no training: only write and print the tables")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over the runs whose folder holds a run of other settings than asked now (its "
                             "outputs are deleted when the new run starts; its logs and other files stay); without "
                             "it such a folder stops the command before any run")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides applied to every run")
    parser.set_defaults(handler="dcac_plugin.tools.experiments:cmd_experiments")
    return parser


def add_extract_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """``dcac extract``: features of images from a trained run."""
    parser = subparsers.add_parser("extract", help="features of a folder or list of images, from a trained run",
                                   formatter_class=HelpFormatter)
    parser.add_argument("run", help=RUN_HELP)
    parser.add_argument("images", help="image folder (searched recursively) or text file with one path per line")
    parser.add_argument("--output", default="features.safetensors", help="features file to write")
    parser.add_argument("--config-file", default=None, help=TRAINED_CONFIG_HELP)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.set_defaults(handler="dcac_plugin.tools.extract:cmd_extract")
    return parser


def add_export_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """``dcac export``: the trained encoder as a self-contained file."""
    parser = subparsers.add_parser("export", help="the trained encoder as ONNX or TorchScript, checked against "
                                                  "PyTorch", formatter_class=HelpFormatter,
                                   epilog="Exit status 1 when the exported file differs from PyTorch.")
    parser.add_argument("run", help=RUN_HELP)
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    parser.add_argument("--output", default=None, help="file to write (default: encoder.onnx or "
                                                       "encoder.torchscript.pt in the run directory)")
    parser.add_argument("--config-file", default=None, help=TRAINED_CONFIG_HELP)
    parser.add_argument("--opset", type=positive_int, default=17, help="ONNX opset version")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.set_defaults(handler="dcac_plugin.tools.export:cmd_export")
    return parser


def add_visualize_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """``dcac visualize {ranked,gradcam,curves}``: pictures of a trained run."""
    parser = subparsers.add_parser("visualize", help="ranked results, GradCAM maps and training curves of a run")
    actions = parser.add_subparsers(dest="action", required=True)

    ranked = actions.add_parser("ranked", formatter_class=HelpFormatter,
                                help="each query beside its top-k gallery matches (green right, red wrong)")
    ranked.add_argument("run", help="run directory or checkpoint")
    ranked.add_argument("--dataset", default=None, help="test dataset (default: the run's first target)")
    ranked.add_argument("--topk", type=positive_int, default=10, help="gallery matches shown per query")
    ranked.add_argument("--max-queries", type=positive_int, default=20)
    ranked.add_argument("--out", default=None, help="output folder (default: <run>/visualize/ranked[_<dataset>])")

    cam = actions.add_parser("gradcam", formatter_class=HelpFormatter,
                             help="GradCAM maps of images under one identity's class (paper Fig. 3)")
    cam.add_argument("run", help="run directory or checkpoint (with the ID classifier)")
    cam.add_argument("images", nargs="+", help="image files")
    cam.add_argument("--class-index", type=non_negative_int, required=True,
                     help="training identity (classifier row) to explain")
    cam.add_argument("--out", default=None, help="output PNG (default: <run>/visualize/gradcam_<class>.png)")

    curves = actions.add_parser("curves", formatter_class=HelpFormatter,
                                help="loss, learning-rate and mAP/Rank-1 curves from the run's TensorBoard events")
    curves.add_argument("run", help="run directory (holding events.out.tfevents.*)")
    curves.add_argument("--out", default=None, help="output folder (default: <run>/visualize)")
    for action in (ranked, cam, curves):
        action.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    parser.set_defaults(handler="dcac_plugin.tools.visualize.cli:cmd_visualize")
    return parser
