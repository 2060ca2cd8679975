"""Resize interpolations of the Re-ID view: training and the PCL memory pass use
``dcac.resize_interpolation``, evaluation and the trained-run tools ``dcac.test_resize_interpolation``
(the authors' code: bicubic in training and its cluster loader, bilinear in its single-source
test loader). Every check compares against PIL resizes done by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from dataset_writers import write_market1501
from PIL import Image

from dcac_config.loading import build_config
from dcac_plugin.data.transforms import build_reid_transforms, reid_transforms
from dcac_plugin.engines import baseline as baseline_module
from dcac_plugin.run.launcher import build_datamanager, prepare
from dcac_plugin.tools.extract import eval_transform

HEIGHT, WIDTH = 32, 16
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    """Noise at an odd size, so that every interpolation gives other pixels."""
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, size=(61, 29, 3), dtype=np.uint8))


def by_hand(image: Image.Image, interpolation: str) -> torch.Tensor:
    resized = image.convert("RGB").resize((WIDTH, HEIGHT), PIL_FILTERS[interpolation])
    return TF.normalize(TF.to_tensor(resized), MEAN, STD)


def config(*opts: str):
    return build_config(None, ["data.height", str(HEIGHT), "data.width", str(WIDTH), "data.norm_mean", str(MEAN),
                               "data.norm_std", str(STD), *opts])


def test_the_interpolations_differ_on_the_test_picture(picture):
    assert not torch.allclose(by_hand(picture, "bilinear"), by_hand(picture, "bicubic"), atol=1e-3)


@pytest.mark.parametrize("train,test", [("bicubic", "bilinear"), ("bilinear", "bicubic"), ("bicubic", None),
                                        ("nearest", "bilinear")])
def test_train_and_memory_resize_with_one_interpolation_test_with_the_other(picture, train, test):
    # No augmentation named: the train transform is then deterministic too.
    transforms = build_reid_transforms(HEIGHT, WIDTH, [], MEAN, STD, interpolation=train, test_interpolation=test)
    assert torch.equal(transforms.train(picture), by_hand(picture, train))
    assert torch.equal(transforms.memory(picture), by_hand(picture, train))
    assert torch.equal(transforms.test(picture), by_hand(picture, test or train))


@pytest.mark.parametrize("train,test_key,tested", [("bicubic", "", "bicubic"), ("bilinear", "", "bilinear"),
                                                   ("bicubic", "bilinear", "bilinear"),
                                                   ("bilinear", "bicubic", "bicubic")])
def test_config_keys_pick_the_interpolations(picture, train, test_key, tested):
    cfg = config("dcac.resize_interpolation", train, "dcac.test_resize_interpolation", test_key)
    transforms = reid_transforms(cfg)
    assert torch.equal(transforms.memory(picture), by_hand(picture, train))
    assert torch.equal(transforms.test(picture), by_hand(picture, tested))
    # dcac extract, visualize (and the resize dcac export describes) use the test one.
    assert torch.equal(eval_transform(cfg)(picture), by_hand(picture, tested))


def market_config(root, *opts: str):
    return config("data.root", str(root), "data.sources", "['market1501']", "data.targets", "['market1501']",
                  "data.workers", "0", "train.batch_size", "4", "test.batch_size", "4",
                  "dcac.resize_interpolation", "bicubic", "dcac.test_resize_interpolation", "bilinear", *opts)


def test_datamanager_evaluates_with_the_test_interpolation(tmp_path):
    written = write_market1501(tmp_path)
    manager = build_datamanager(market_config(tmp_path), use_gpu=False)
    image = Image.open(written.query[0][0])
    for loader in manager.test_loader["market1501"].values():
        assert torch.equal(loader.dataset.transform(image), by_hand(image, "bilinear"))
    assert torch.equal(manager.transform_memory(image), by_hand(image, "bicubic"))
    assert manager.transform_tr.transforms[0].interpolation == TF.InterpolationMode.BICUBIC


def test_pcl_memory_pass_resizes_with_the_training_interpolation(tmp_path, monkeypatch):
    written = write_market1501(tmp_path)
    cfg = market_config(tmp_path, "engine", "baseline", "model.name", "clip_vit_tiny", "model.pretrained", "False",
                        "sampler.num_instances", "2", "data.save_dir", str(tmp_path / "log"))
    engine = prepare(cfg).engine
    used = []

    def recording_loader(items, transform, *args, **kwargs):
        used.append(transform)
        return loader(items, transform, *args, **kwargs)

    loader = baseline_module.image_list_loader
    monkeypatch.setattr(baseline_module, "image_list_loader", recording_loader)
    features, labels = engine.extract_train_features()
    assert features.shape[0] == labels.shape[0] == len(written.train)
    (transform,) = used
    image = Image.open(written.train[0][0])
    assert torch.equal(transform(image), by_hand(image, "bicubic"))
