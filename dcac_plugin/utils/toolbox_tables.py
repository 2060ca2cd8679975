"""torchreid's own tables of models and datasets, which it keeps under private names."""
from __future__ import annotations

from torchreid import data as reid_data
from torchreid import models as reid_models


def model_factory() -> dict:
    """torchreid's module-level ``__model_factory`` (reached with getattr: the name is private)."""
    return getattr(reid_models, "__model_factory")


def image_dataset_table() -> dict:
    return getattr(reid_data.datasets, "__image_datasets")
