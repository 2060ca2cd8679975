"""Training curves from a run's TensorBoard events, as PNGs for a report or a remote machine.

Every engine logs torchreid's ``Train/<term>`` and ``Train/lr`` per step and our
``Test/<dataset>/{rank1,mAP,mINP}`` per evaluation epoch to one event log, so the event
file alone is enough: no log parsing.
"""
from __future__ import annotations

import glob
import os
import os.path as osp
from typing import Dict, List, Tuple

Scalars = Dict[str, List[Tuple[int, float]]]

FIGSIZE = (8.0, 4.5)
DPI = 100
# torchreid's timing meters, the learning rate and the training accuracy (percent) are not loss terms.
NOT_LOSSES = ("Train/time", "Train/data", "Train/lr", "Train/acc")
# What plot_training_curves may write into its folder (those the run logged the scalars of).
CURVE_FILES = ("losses.png", "lr.png", "evaluation.png")
LOSSES_PNG, LR_PNG, EVALUATION_PNG = CURVE_FILES


def event_files(run: str) -> List[str]:
    """The TensorBoard event files of a run directory, oldest first (a resumed run adds one)."""
    files = sorted(glob.glob(osp.join(run, "events.out.tfevents.*")))
    if not files:
        raise FileNotFoundError(f"No TensorBoard event file (events.out.tfevents.*) in {run}: training curves "
                                "come from the event log a training run writes to its data.save_dir.")
    return files


def read_scalars(run: str) -> Scalars:
    """``{tag: [(step, value), ...]}`` of every scalar in the run's event files, in the order written."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    scalars: Scalars = {}
    for path in event_files(run):
        # size 0 keeps every event; the default samples 10,000 per tag.
        accumulator = EventAccumulator(path, size_guidance={SCALARS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()[SCALARS]:
            scalars.setdefault(tag, []).extend((int(e.step), float(e.value)) for e in accumulator.Scalars(tag))
    return scalars


def evaluation_points(points: List[Tuple[int, float]]) -> List[Tuple[int, float]]:
    """An evaluation series with one point per epoch, in order.

    Points that step backwards are dropped: a resumed run logs into a new event file and may
    repeat an epoch, and runs written by torchreid's own ``test`` log the same value again at
    the 0-based epoch.
    """
    kept: List[Tuple[int, float]] = []
    for step, value in points:
        if not kept or step > kept[-1][0]:
            kept.append((step, value))
    return kept


def _save(figure, path: str) -> str:
    """Write ``figure`` as a PNG, atomically (a crash never leaves half a picture)."""
    import matplotlib.pyplot as plt

    from ...utils.checkpoint import atomic_write

    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=DPI))
    plt.close(figure)
    return path


def _figure(title: str, xlabel: str, ylabel: str):
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a training server
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=FIGSIZE)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def plot_training_curves(run: str, out_dir: str) -> List[str]:
    """PNGs of the loss terms, the learning rate and the evaluation metrics (those the run logged)."""
    scalars = read_scalars(run)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    losses = sorted(tag for tag in scalars if tag.startswith("Train/") and tag not in NOT_LOSSES)
    if losses:
        figure, axes = _figure("Training losses", "iteration", "loss (running epoch average)")
        for tag in losses:
            steps, values = zip(*scalars[tag])
            axes.plot(steps, values, label=tag[len("Train/"):])
        axes.legend()
        written.append(_save(figure, osp.join(out_dir, LOSSES_PNG)))
    if "Train/lr" in scalars:
        figure, axes = _figure("Learning rate", "iteration", "lr")
        steps, values = zip(*scalars["Train/lr"])
        axes.plot(steps, values)
        written.append(_save(figure, osp.join(out_dir, LR_PNG)))
    metrics = sorted(tag for tag in scalars if tag.startswith("Test/") and tag.rsplit("/", 1)[-1] in ("mAP", "rank1"))
    if metrics:
        from matplotlib.ticker import MaxNLocator

        figure, axes = _figure("Evaluation", "epoch", "%")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        for tag in metrics:
            steps, values = zip(*evaluation_points(scalars[tag]))
            axes.plot(steps, [100 * v for v in values], marker="o", label=tag[len("Test/"):])
        axes.legend()
        written.append(_save(figure, osp.join(out_dir, EVALUATION_PNG)))
    if not written:
        raise ValueError(f"The event files of {run} hold no Train/* or Test/* scalars to plot.")
    return written


__all__ = ["CURVE_FILES", "evaluation_points", "event_files", "plot_training_curves", "read_scalars"]
