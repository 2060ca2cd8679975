"""The torchreid ``dcac_plugin`` runs on, imported and checked before anything else uses it.

Two packagings of deep-person-reid 1.4.0 are supported, told apart by whether ``torchreid.reid``
exists (their version numbers are unrelated):

- PyPI ``torchreid`` >= 0.2.5: the modules under ``torchreid.reid.*``, re-exported by
  ``torchreid/__init__.py`` as ``torchreid.data``, ``.engine``, ``.models``, ...;
- deep-person-reid installed from source, version 1.4.0 or later: the modules directly under ``torchreid.*``.

The version alone does not prove the layout, so every torchreid attribute our code reaches is
checked too: a torchreid that moved one fails here, at ``import dcac_plugin``, with one line
naming what is supported, instead of an AttributeError deep inside a run.
"""
from __future__ import annotations

import importlib
import re
import warnings
from types import ModuleType
from typing import List, Optional, Tuple

from dcac_config.errors import SetupError

SUPPORTED = ("dcac-reid runs on PyPI torchreid >= 0.2.5 (modules under torchreid.reid: pip install 'torchreid>=0.2.5') "
             "or on deep-person-reid 1.4.0 installed from source (modules directly under torchreid: "
             "pip install -e . in a clone of https://github.com/KaiyangZhou/deep-person-reid).")
# The lowest supported torchreid.__version__ of each layout: with torchreid.reid (PyPI), without (source).
PYPI_MINIMUM, SOURCE_MINIMUM = (0, 2, 5), (1, 4, 0)
# Every torchreid attribute dcac_plugin reaches, from the top-level package (tests/test_toolbox_check.py
# checks that the code names no other).
REQUIRED = (
    "data.Dataset.combine_all", "data.ImageDataManager", "data.ImageDataset", "data.register_image_dataset", "data.datasets.__image_datasets",
    "data.datasets.image.CUHK02", "data.datasets.image.CUHKSYSU",
    "data.datasets.image.Market1501", "data.datasets.image.MSMT17", "data.datamanager.build_transforms",
    "data.sampler.build_train_sampler", "data.transforms.Random2DTranslation", "data.transforms.RandomErasing",
    "data.transforms.RandomPatch",
    "engine.Engine", "engine.ImageSoftmaxEngine", "engine.ImageTripletEngine",
    "losses.CrossEntropyLoss", "losses.TripletLoss",
    "metrics.accuracy", "metrics.compute_distance_matrix", "metrics.evaluate_rank",
    "models.build_model", "models.__model_factory",
    "optim.build_lr_scheduler", "optim.build_optimizer", "optim.optimizer.AVAI_OPTIMS",
    "utils.set_random_seed", "utils.visualize_ranked_results",
)


class ToolboxError(SetupError):
    """torchreid is missing, too old, or laid out in a way we do not know."""


def release(version: str) -> Optional[Tuple[int, ...]]:
    """The leading release numbers of a version string ("0.2.5" -> (0, 2, 5)); None if it has none."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else None


def _has(toolbox: ModuleType, dotted: str) -> bool:
    target: object = toolbox
    for name in dotted.split("."):
        if not hasattr(target, name):
            return False
        target = getattr(target, name)
    return True


def toolbox_problem(toolbox: ModuleType) -> Optional[str]:
    """What rules out this imported torchreid, or None when dcac_plugin runs on it."""
    version = str(getattr(toolbox, "__version__", ""))
    pypi = isinstance(getattr(toolbox, "reid", None), ModuleType)
    minimum = PYPI_MINIMUM if pypi else SOURCE_MINIMUM
    numbers = release(version)
    if numbers is None:
        return f"its torchreid.__version__ is {version or 'missing'}"
    if numbers < minimum:
        layout = "modules under torchreid.reid" if pypi else "modules directly under torchreid"
        return f"version {version} ({layout}) is older than {'.'.join(map(str, minimum))}"
    missing: List[str] = [name for name in REQUIRED if not _has(toolbox, name)]
    if missing:
        return f"version {version} lacks torchreid.{', torchreid.'.join(missing)} (a layout we do not know)"
    return None


def check_toolbox(toolbox: ModuleType) -> None:
    """Raise :class:`ToolboxError` unless dcac_plugin runs on this imported torchreid."""
    problem = toolbox_problem(toolbox)
    if problem:
        where = getattr(toolbox, "__file__", None) or toolbox.__name__
        raise ToolboxError(f"Unsupported torchreid at {where}: {problem}. {SUPPORTED}")


def import_toolbox() -> ModuleType:
    """torchreid, imported (for the first time, when ``import dcac_plugin`` runs this) and checked.

    torchreid warns on import, whatever runs, when its Cython ranking is not built (never, from
    PyPI). Our engines rank with dcac_plugin.evaluation; where torchreid's ranking does run
    (test.rerank, test.visrank) the engine says so (evaluation.torchreid_ranking_note).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cython evaluation", category=UserWarning)
        try:
            toolbox = importlib.import_module("torchreid")
        except ModuleNotFoundError as err:
            if err.name != "torchreid":
                raise
            raise ToolboxError(f"torchreid is not installed. {SUPPORTED}") from None
    check_toolbox(toolbox)
    return toolbox
