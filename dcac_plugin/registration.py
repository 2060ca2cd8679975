"""Registration of our models and datasets into torchreid's own tables (idempotent)."""
from __future__ import annotations

from torchreid import data as reid_data

from .data.datasets import EXTRA_DATASETS
from .data.synthetic import SYNTHETIC_DATASETS
from .models import CLIP_MODELS
from .utils.toolbox_tables import image_dataset_table, model_factory


def register_all() -> None:
    """Add our models to torchreid's model factory and our datasets to its dataset table."""
    factory = model_factory()
    for name, builder in CLIP_MODELS.items():
        factory[name] = builder
    datasets = image_dataset_table()
    for name, cls in {**SYNTHETIC_DATASETS, **EXTRA_DATASETS}.items():
        if datasets.get(name) is not cls:
            datasets.pop(name, None)
            reid_data.register_image_dataset(name, cls)
