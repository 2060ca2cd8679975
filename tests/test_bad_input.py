"""Bad input gets a clear message naming the file or key and the fix; nothing runs on silently."""
import os
import shutil

import numpy as np
import pytest
import torch

from dcac_config.errors import ConfigError
from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path
from dcac_plugin.cli import main
from dcac_plugin.data.loaders import train_items
from dcac_plugin.data.synthetic import ensure_synthetic_dataset
from dcac_plugin.engines.common import NonFiniteLossError
from dcac_plugin.run.launcher import build_datamanager, prepare
from dcac_plugin.utils.checkpoint import CheckpointError, load_checkpoint


def train(*args):
    return main(["train", "--config-file", demo_config_path("baseline"), *args])


@pytest.fixture()
def copied_root(data_root, tmp_path):
    """A private copy of synthetic_a that a test may damage."""
    ensure_synthetic_dataset(data_root, "synthetic_a")
    root = tmp_path / "data"
    shutil.copytree(os.path.join(data_root, "synthetic_a"), root / "synthetic_a")
    return root


# ------------------------------------------------------------------ datasets


def test_missing_data_root_names_it_and_shows_the_layout(tmp_path, capsys):
    code = train("-s", "market1501", "-t", "market1501", "--root", str(tmp_path / "nowhere"),
                 "data.save_dir", str(tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 2
    assert str(tmp_path / "nowhere") in err and "does not exist" in err
    assert "bounding_box_train" in err and "query" in err and "data.root" in err


def test_missing_split_folder_is_named_with_the_expected_layout(tmp_path, capsys):
    for split in ("bounding_box_train", "bounding_box_test"):
        os.makedirs(tmp_path / "market1501" / split)
    code = train("-s", "market1501", "-t", "market1501", "--root", str(tmp_path),
                 "data.save_dir", str(tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 2
    assert os.path.join("market1501", "query") in err and "bounding_box_test" in err and "--root" in err


def test_corrupt_training_image_stops_with_its_name_and_the_skip_option(copied_root, tmp_path, capsys):
    victim = sorted((copied_root / "synthetic_a" / "bounding_box_train").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    code = train("--root", str(copied_root), "data.save_dir", str(tmp_path / "run"), "train.max_epoch", "1")
    err = capsys.readouterr().err
    assert code == 2
    assert str(victim) in err and "truncated" in err and "data.skip_corrupt_images" in err


def test_skip_corrupt_images_drops_them_with_a_count(copied_root, capsys):
    train_dir = copied_root / "synthetic_a" / "bounding_box_train"
    victims = sorted(train_dir.iterdir())[3:5]
    victims[0].write_bytes(b"")  # empty
    victims[1].write_bytes(b"not an image at all")  # corrupt
    cfg = build_config(demo_config_path("baseline"), ["data.root", str(copied_root), "data.skip_corrupt_images", "True"])
    manager = build_datamanager(cfg, use_gpu=False)
    out = capsys.readouterr().out
    assert "Skipping 2 unreadable image(s)" in out and str(victims[0]) in out
    paths = [item[0] for item in train_items(manager)]
    assert len(paths) == len(list(train_dir.iterdir())) - 2
    assert not {str(v) for v in victims} & set(paths)
    batch = next(iter(manager.train_loader))  # the rebuilt loader reads and samples the remaining images
    assert batch["img"].shape == (32, 3, 128, 64)


def test_identities_with_fewer_images_than_num_instances_are_reported(data_root, capsys):
    cfg = build_config(demo_config_path("baseline"), ["data.root", data_root, "sampler.num_instances", "20", "train.batch_size", "40"])
    build_datamanager(cfg, use_gpu=False)
    out = capsys.readouterr().out
    assert "training identities have fewer than sampler.num_instances = 20 images" in out
    assert "Lower sampler.num_instances" in out


def test_batch_smaller_than_one_identity_group_is_a_config_error(data_root):
    cfg = build_config(demo_config_path("baseline"), ["data.root", data_root, "sampler.num_instances", "64"])
    with pytest.raises(ConfigError, match="train.batch_size .* sampler.num_instances"):
        build_datamanager(cfg, use_gpu=False)


def test_unwritable_save_dir_fails_before_any_work(data_root, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = train("--root", data_root, "data.save_dir", str(blocker / "run"))
    err = capsys.readouterr().err
    assert code == 2 and "data.save_dir" in err and str(blocker / "run") in err and "writable" in err


# --------------------------------------------------------------- checkpoints


class Payload:
    """Any class: unpickling it means running code chosen by the file."""


def test_checkpoint_needing_arbitrary_unpickling_is_refused_with_the_reason(tmp_path, data_root, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        load_checkpoint(str(path))
    code = train("--root", data_root, "data.save_dir", str(tmp_path / "eval"), "test.evaluate", "True",
                 "model.load_weights", str(path))
    assert code == 2 and "could run code" in capsys.readouterr().err


def test_truncated_and_missing_checkpoints_are_named(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "absent.pth"))


def test_torchreid_checkpoints_with_numpy_scalars_load_safely(tmp_path):
    path = tmp_path / "torchreid.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3, "rank1": np.float64(0.625)}, path)
    state = load_checkpoint(str(path))
    assert float(state["rank1"]) == 0.625 and torch.equal(state["state_dict"]["w"], torch.ones(2))
    with open(path, "rb") as handle:
        assert b"numpy" in handle.read()  # the file really holds a numpy scalar


def test_resume_with_other_identities_says_to_load_the_encoder_only(baseline_run, data_root, tmp_path, capsys):
    latest = os.path.join(baseline_run, "model", "latest.pth.tar")
    # Two sources: 64 + 64 identities.
    base = ["-s", "synthetic_a", "synthetic_b", "-t", "synthetic_b", "--root", data_root]
    code = train(*base, "data.save_dir", str(tmp_path / "a"), "model.resume", latest)
    err = capsys.readouterr().err
    assert code == 2  # refused from the run's config.yaml, before any work
    assert "changes 1 key a resume cannot: data.sources [synthetic_a] in the run, [synthetic_a, synthetic_b] now" in err
    assert f"start a new run from its weights with model.load_weights {latest}" in err
    # A checkpoint without its config.yaml is refused by the identities it was trained on.
    alone = tmp_path / "alone.pth.tar"
    shutil.copy(latest, alone)
    code = train(*base, "data.save_dir", str(tmp_path / "a"), "model.resume", str(alone))
    err = capsys.readouterr().err
    assert code == 2
    assert "trained on 64 identities; this run has 128" in err and "the rest of the model matches" in err
    assert "use model.load_weights with this file" in err
    # ... and that option works: encoder loaded, classifier fresh, training proceeds.
    code = train(*base, "data.save_dir", str(tmp_path / "b"), "model.load_weights", latest, "train.max_epoch", "1",
                 "train.print_freq", "100")
    out = capsys.readouterr().out
    assert code == 0 and (f"Loaded weights from {latest}: its classifier was trained on 64 identities and this run "
                          "has 128: the classifier is skipped and starts fresh") in out


def test_non_finite_loss_stops_with_step_and_terms_and_keeps_the_last_checkpoint(data_root, tmp_path):
    cfg = build_config(demo_config_path("baseline"), ["data.root", data_root, "data.save_dir", str(tmp_path),
                                                      "train.max_epoch", "2", "train.print_freq", "100"])
    prepared = prepare(cfg)
    engine = prepared.engine
    compute = engine.compute_losses

    def poisoned(output, pids, data):
        terms = compute(output, pids, data)
        if engine.epoch == 1 and engine.batch_idx == 2:
            terms["loss_pcl"] = terms["loss_pcl"] * float("nan")
        return terms

    engine.compute_losses = poisoned
    with pytest.raises(NonFiniteLossError) as info:
        engine.run(**prepared.run_kwargs)
    message = str(info.value)
    assert "epoch 2, step 3" in message and "loss_pcl=nan" in message and "loss_id=" in message
    latest = os.path.join(str(tmp_path), "model", "latest.pth.tar")
    assert latest in message
    state = load_checkpoint(latest)
    assert state["epoch"] == 1  # the end of the last good epoch
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    # The broken step never reached the weights in memory either.
    assert all(torch.isfinite(p).all() for p in prepared.model.parameters())


# ------------------------------------------------------ the authors' checkpoints


def test_authors_checkpoint_layout_loads_and_evaluates(baseline_run, data_root, tmp_path):
    import json

    own = load_checkpoint(os.path.join(baseline_run, "model", "latest.pth.tar"))["state_dict"]
    reference = {}
    for key, value in own.items():
        if key.startswith("backbone."):
            reference["encoder.image_encoder." + key[len("backbone."):]] = value
        elif key.startswith("bnneck."):
            reference["encoder.bnneck." + key[len("bnneck."):]] = value
    reference["encoder.fc.weight"] = torch.randn(751, own["classifier.weight"].shape[1])  # trained on Market1501
    reference["denoiser.unet.conv_in.weight"] = torch.randn(4, 4, 3, 3)
    reference["denoiser.prompts"] = torch.randn(751, 1, 32)
    path = tmp_path / "dcac_market1501.pth"
    torch.save(reference, path)

    assert train("--root", data_root, "data.save_dir", str(tmp_path / "eval"), "test.evaluate", "True",
                 "model.load_weights", str(path)) == 0
    again = json.load(open(tmp_path / "eval" / "results.json"))["results"]["synthetic_b"]
    trained = json.load(open(os.path.join(baseline_run, "results.json")))["results"]["synthetic_b"]
    assert again["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)
    assert again["rank1"] == pytest.approx(trained["rank1"], abs=1e-6)

