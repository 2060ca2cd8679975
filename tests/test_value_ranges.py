"""A config value out of its range stops ``dcac train`` before any work, in one line naming the key,
the valid range and a value to use (exit 2); torchreid would fail deep inside the run, or never."""
from __future__ import annotations

import pytest
from conftest import train_error

from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path, shipped_configs
from dcac_plugin.run.validation import check_values


def write(tmp_path, text: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text("engine: baseline\nmodel:\n  name: clip_vit_tiny\n  pretrained: False\n" + text)
    return str(path)


@pytest.mark.parametrize("key,value,minimum", [
    ("train.batch_size", "0", 1), ("test.batch_size", "-4", 1), ("sampler.num_instances", "0", 1),
    ("data.workers", "-1", 0), ("dcac.lora.rank", "0", 1), ("data.width", "0", 1)])
def test_counts_below_their_minimum_are_named(tmp_path, capsys, key, value, minimum):
    assert train_error(tmp_path, capsys, key, value) == f"{key} is {value}; it must be at least {minimum}."


@pytest.mark.parametrize("key,value", [
    ("train.lr", "0.0"), ("train.lr", "-0.001"), ("dcac.pcl.temperature", "0.0"),
    ("dcac.condition.temperature", "-1.0")])
def test_rates_and_temperatures_must_be_above_zero(tmp_path, capsys, key, value):
    assert train_error(tmp_path, capsys, key, value) == f"{key} is {float(value)}; it must be a finite number above 0."


@pytest.mark.parametrize("text,shown", [(".nan", "nan"), (".inf", "inf")])
def test_a_learning_rate_that_is_not_finite_is_refused(tmp_path, capsys, text, shown):
    message = train_error(tmp_path, capsys, config=write(tmp_path, f"train:\n  lr: {text}\n"))
    assert message == f"train.lr is {shown}; it must be a finite number above 0."


def test_unknown_optimizer_names_torchreids_list_and_the_nearest(tmp_path, capsys):
    assert train_error(tmp_path, capsys, "train.optim", "adamw") == (
        "train.optim 'adamw' is not one of torchreid's optimizers: adam, amsgrad, sgd, rmsprop, radam. "
        "Did you mean 'adam'?")


@pytest.mark.parametrize("batch,alternatives", [("30", "28 or 32"), ("2", "4")])
def test_identity_batches_must_hold_whole_groups_of_num_instances(tmp_path, capsys, batch, alternatives):
    # The paper recipe (engine baseline) samples 4 images per identity.
    assert train_error(tmp_path, capsys, "train.batch_size", batch) == (
        f"train.batch_size {batch} is not a multiple of sampler.num_instances 4: RandomIdentitySampler fills each "
        "batch with whole groups of 4 images of one identity, and a remainder would cut across them. Set "
        f"train.batch_size to {alternatives}, or change sampler.num_instances.")


def test_other_samplers_take_any_batch_size(tmp_path):
    cfg = build_config(demo_config_path("baseline"), ["sampler.train_sampler", "RandomSampler",
                                                      "train.batch_size", "30"])
    check_values(cfg)


@pytest.mark.parametrize("key,value,alternatives", [("data.height", "250", "240 or 256"),
                                                    ("data.width", "8", "16")])
def test_clip_input_sides_must_be_multiples_of_the_patch_size(tmp_path, capsys, key, value, alternatives):
    assert train_error(tmp_path, capsys, key, value) == (
        f"{key} {value} is not a multiple of 16: model clip_vit_tiny cuts its input into 16x16 patches and would "
        f"ignore the last {int(value) % 16} pixels. Set {key} to {alternatives}.")


def test_other_models_take_any_input_size():
    check_values(build_config(None, ["model.name", "osnet_x1_0", "data.height", "250", "data.width", "100"]))


@pytest.mark.parametrize("value,alternatives", [("100", "96 or 104"), ("0", "8"), ("4", "8")])
def test_diffusion_image_size_must_be_a_positive_multiple_of_8(tmp_path, capsys, value, alternatives):
    message = train_error(tmp_path, capsys, "dcac.diffusion.image_size", value, config=demo_config_path("dcac"))
    assert message == (f"dcac.diffusion.image_size {value} is not a positive multiple of 8 (the VAE's downsampling). "
                       f"Set it to {alternatives}; the paper uses 128.")


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_and_the_defaults_are_in_range(name):
    check_values(build_config(shipped_configs()[name]))
    check_values(build_config(None))
