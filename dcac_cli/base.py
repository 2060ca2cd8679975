"""What every ``dcac`` parser shares: one form for errors and one help layout.

A command line argparse rejects and an input a command rejects read the same,
``dcac: error: <message>`` with exit status 2, whichever sub-command it was.
"""
from __future__ import annotations

import argparse
from typing import NoReturn, Optional

PROG = "dcac"


def error_line(message: str) -> str:
    """How ``dcac`` reports an error on stderr."""
    return f"{PROG}: error: {message}"


class DcacArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser (and, through ``add_subparsers``, its sub-command parsers) whose
    errors read ``dcac: error: ...`` first, then the usage of the (sub-)command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{error_line(message)}\n{self.format_usage()}")


# The largest batch and identity count the commands plan or build: far beyond what one GPU
# holds (a ViT-B/16 training step needs tens of GB at a few hundred images) and beyond the
# largest Re-ID training sets (tens of thousands of identities), yet small enough that what
# is built per image or per identity stays small.
MAX_BATCH = 65536
MAX_CLASSES = 1_000_000
MAX_GPU_MEMORY_GB = 100_000.0


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (``--steps``)."""
    return _bounded_int(text, 1, "a whole number of at least 1")


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of at least 0 (``--warmup``)."""
    return _bounded_int(text, 0, "a whole number of at least 0")


def training_batch_size(text: str) -> int:
    """An argparse type: images per training step (``stats`` and ``bench train --batch-size``),
    2 to :data:`MAX_BATCH`: the BNNeck's batch norm needs two images in training."""
    return _bounded_int(text, 2, f"a whole number from 2 (the BNNeck's batch norm needs two images in training) "
                                 f"to {MAX_BATCH} (the largest batch planned or built here; a step's memory grows "
                                 f"with its batch, and {MAX_BATCH} images need terabytes)", highest=MAX_BATCH)


def identity_count(text: str) -> int:
    """An argparse type: training identities (``stats --num-classes``), 1 to :data:`MAX_CLASSES`."""
    return _bounded_int(text, 1, f"a whole number of training identities from 1 to {MAX_CLASSES}",
                        highest=MAX_CLASSES)


def gpu_memory_gb(text: str) -> float:
    """An argparse type: a GPU's memory in GB (``stats --gpu-memory-gb``), finite and above 0."""
    wanted = f"a number of GB above 0 and at most {MAX_GPU_MEMORY_GB:g}"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
    if not 0 < value <= MAX_GPU_MEMORY_GB:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text} is not {wanted}")
    return value


def _bounded_int(text: str, lowest: int, wanted: str, highest: Optional[int] = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
    if value < lowest or (highest is not None and value > highest):
        raise argparse.ArgumentTypeError(f"{value} is not {wanted}")
    return value


def bench_setting(text: str) -> str:
    """An argparse type: ``AMP:cache`` or ``AMP:encode`` (``dcac bench train --settings``),
    checked here, without torch, against the names the benchmark accepts."""
    from .choices import AMP_CHOICES, LATENT_INPUTS

    amp, sep, latents = text.partition(":")
    if not sep or amp not in AMP_CHOICES or latents not in LATENT_INPUTS:
        raise argparse.ArgumentTypeError(f"{text!r}: use AMP:{'|'.join(LATENT_INPUTS)} with AMP one of "
                                         f"{', '.join(AMP_CHOICES)} (e.g. fp16:encode)")
    return text


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown after each option's help; descriptions and epilogs (engine lists,
    examples) printed as written."""
