import pytest
import yaml

from dcac_config.defaults import get_default_config
from dcac_config.errors import ConfigError
from dcac_config.loading import build_config
from dcac_plugin.run.launcher import check_config


def write(tmp_path, content: dict, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content))
    return str(path)


def test_upstream_config_keeps_upstream_meaning(tmp_path):
    upstream = {"model": {"name": "osnet_x1_0", "pretrained": True}, "data": {"type": "image", "sources": ["market1501"],
                "targets": ["market1501"], "height": 256, "width": 128, "transforms": ["random_flip"]},
                "loss": {"name": "triplet"}, "use_gpu": True, "train": {"optim": "amsgrad", "lr": 0.0015}}
    cfg = build_config(write(tmp_path, upstream))
    assert cfg.engine == "triplet"  # from loss.name, as upstream's launcher picks it
    assert cfg.train.optim == "amsgrad" and cfg.train.lr == 0.0015
    assert cfg.train.weight_decay == 5e-4 and cfg.train.batch_size == 32  # upstream defaults untouched
    assert cfg.data.norm_mean == [0.485, 0.456, 0.406]
    # Our additions keep torchreid's behaviour: MSMT17 list_train only, full precision, and the
    # test-time resize following the training one.
    assert cfg.msmt17.train_with_val is False and cfg.train.amp == "off"
    assert cfg.dcac.test_resize_interpolation == ""


def test_paper_engines_start_from_the_paper_recipe(tmp_path):
    cfg = build_config(write(tmp_path, {"engine": "baseline", "train": {"max_epoch": 5}}))
    assert cfg.model.name == "clip_vit_b16"
    assert cfg.train.lr == 5e-6 and cfg.train.weight_decay == 1e-4 and cfg.train.optim == "adam"
    assert cfg.train.max_epoch == 5  # the file wins over the recipe
    assert cfg.train.batch_size == 64 and cfg.sampler.num_instances == 4
    assert cfg.sampler.train_sampler == "RandomIdentitySampler"
    assert cfg.train.lr_scheduler == "warmup_multi_step" and cfg.train.stepsize == [30, 50]
    assert cfg.dcac.warmup_epochs == 10 and cfg.dcac.warmup_factor == 0.1
    assert cfg.data.norm_mean == [0.5, 0.5, 0.5] and cfg.data.norm_std == [0.5, 0.5, 0.5]
    assert cfg.data.transforms == ["random_flip", "pad_crop", "random_erase"]
    assert cfg.dcac.pcl.temperature == 0.01 and cfg.dcac.pcl.momentum == 0.2
    # The reference's training set (MSMT17 with its val images) and mixed precision.
    assert cfg.msmt17.train_with_val is True and cfg.train.amp == "auto"
    assert cfg.train.seed == 1234 and cfg.train.deterministic is False  # the reference's seed
    assert build_config(None, []).train.seed == 1  # torchreid's, without the recipe
    # engine chosen on the command line also selects the recipe
    assert build_config(None, ["engine", "baseline"]).train.lr == 5e-6


def test_flags_and_pairs_apply_in_upstream_order(tmp_path):
    cfg = build_config(write(tmp_path, {"data": {"root": "a"}}), ["data.save_dir", "log/x", "train.max_epoch", "3"],
                       sources=["market1501"], targets=["msmt17", "dukemtmcreid"], root="DATA")
    assert cfg.data.root == "DATA" and cfg.data.sources == ["market1501"]
    assert cfg.data.targets == ["msmt17", "dukemtmcreid"] and cfg.data.save_dir == "log/x"
    assert cfg.train.max_epoch == 3


def test_unknown_key_in_file_names_nearest_key(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown config key 'train\.lrr'.*Did you mean 'train\.lr'"):
        build_config(write(tmp_path, {"train": {"lrr": 0.1}}))
    with pytest.raises(ConfigError, match=r"'dcac\.pcl\.temprature'.*'dcac\.pcl\.temperature'"):
        build_config(write(tmp_path, {"dcac": {"pcl": {"temprature": 0.1}}}))


def test_unknown_key_on_command_line_names_nearest_key():
    with pytest.raises(ConfigError, match=r"'train\.max_epochs'.*'train\.max_epoch'"):
        build_config(None, ["train.max_epochs", "3"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        build_config(None, ["train.max_epoch"])


def test_bad_value_type_is_reported():
    with pytest.raises(ConfigError, match="Bad value"):
        build_config(None, ["train.max_epoch", "'ten'"])


def test_unknown_engine_model_dataset_names_are_suggested():
    cfg = get_default_config()
    cfg.engine = "basline"
    with pytest.raises(ConfigError, match="Did you mean 'baseline'"):
        check_config(cfg)
    cfg.engine = "softmax"
    cfg.model.name = "clip_vit_b61"
    with pytest.raises(ConfigError, match="Did you mean 'clip_vit_b16'"):
        check_config(cfg)
    cfg.model.name = "clip_vit_b16"
    cfg.data.sources = ["market1510"]
    with pytest.raises(ConfigError, match="Did you mean 'market1501'"):
        check_config(cfg)


@pytest.mark.parametrize("key", ["dcac.resize_interpolation", "dcac.test_resize_interpolation"])
def test_unknown_interpolation_is_a_config_error_naming_the_key(key):
    check_config(build_config(None, [key, "bilinear"]))
    with pytest.raises(ConfigError, match=rf"{key}.*'bilinaer'.*Did you mean 'bilinear'"):
        check_config(build_config(None, [key, "bilinaer"]))


def test_baseline_engine_refuses_a_model_without_one_linear_classifier():
    check_config(build_config(None, ["engine", "baseline", "model.name", "osnet_x0_25"]))
    cfg = build_config(None, ["engine", "baseline", "model.name", "hacnn"])
    with pytest.raises(ConfigError, match="torchreid model 'hacnn' has no single linear classifier"):
        check_config(cfg)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_config(str(tmp_path / "missing.yaml"))


def shipped_configs():
    import glob
    import os

    import dcac_config

    # The repository's configs/ is the package's configs/paper/.
    package = os.path.join(os.path.dirname(dcac_config.__file__), "configs")
    return sorted(glob.glob(os.path.join(package, "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.split("/")[-1])
def test_every_shipped_config_is_valid(path):
    cfg = build_config(path)
    check_config(cfg)
    if cfg.engine == "dcac" and "ablations" not in path and len(cfg.data.sources) == 1:  # ablations vary these
        source = cfg.data.sources[0]
        if source == "market1501":
            assert cfg.dcac.lora.rank == 8 and cfg.dcac.condition.temperature == 0.6
        if source == "msmt17":
            assert cfg.dcac.lora.rank == 32 and cfg.dcac.condition.temperature == 1.0


def test_shipped_configs_found():
    names = {p.split("/")[-1] for p in shipped_configs()}
    assert {"demo_softmax.yaml", "demo_baseline.yaml", "demo_dcac.yaml", "dcac_market1501_to_msmt17.yaml",
            "dcac_msmt17_to_market1501.yaml"} <= names
