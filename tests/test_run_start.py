"""What a run says and leaves behind at its start.

The transforms it prints are the ones its loaders and passes apply (torchreid's own list, which
would not run, is never printed); a run that fails before it starts leaves no ``config.yaml``, so
its folder never passes for a run.
"""
import os

import pytest
from torchreid import data as reid_data

from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path
from dcac_plugin.cli import main
from dcac_plugin.data.transforms import build_reid_transforms, describe_transforms
from dcac_plugin.data.views import TwoViewTransform
from dcac_plugin.run.launcher import build_datamanager
from dcac_plugin.tools.experiments import run_status
from dcac_plugin.tools.inference import load_trained_model
from dcac_plugin.utils.checkpoint import CheckpointError
from dcac_plugin.utils.swap import swapped

TORCHREID_LIST = ("Building train transforms", "Building test transforms", "+ resize to", "+ random flip",
                  "+ random erase", "+ normalization")


def printed_blocks(out: str) -> dict:
    """{title: [step lines]} of the transform blocks in ``out``."""
    blocks, title = {}, None
    for line in out.splitlines():
        if title is not None and line.startswith("  "):
            blocks[title].append(line[2:])
        elif line.endswith(":") and "transforms" in line:
            title = line[:-1]
            blocks[title] = []
        else:
            title = None
    return blocks


def assert_names(lines: list, transform) -> None:
    """``lines`` are ``transform``'s steps: torchvision's by their exact repr, torchreid's by
    class name and settings (they have no repr of their own)."""
    steps = transform.transforms
    assert len(lines) == len(steps)
    for line, step in zip(lines, steps):
        if type(step).__module__.startswith("torchvision"):
            assert line == repr(step)
        else:
            assert line.startswith(f"torchreid.{type(step).__name__}(") and "object at" not in line


def datamanager_output(capsys, engine: str, data_root: str, *opts: str):
    manager = build_datamanager(build_config(demo_config_path(engine), ["data.root", data_root, *opts]),
                                use_gpu=False)
    return manager, capsys.readouterr().out


# ------------------------------------------------------------------ transforms


@pytest.mark.parametrize("engine", ["softmax", "baseline", "dcac"])
def test_printed_transforms_are_the_ones_the_loaders_hold(engine, data_root, capsys):
    manager, out = datamanager_output(capsys, engine, data_root)
    assert not [phrase for phrase in TORCHREID_LIST if phrase in out]
    blocks = printed_blocks(out)
    train = manager.train_loader.dataset.transform
    assert_names(blocks["Train transforms (applied)"], train)
    test_loaders = [loader for splits in manager.test_loader.values() for loader in splits.values()]
    assert test_loaders and all(loader.dataset.transform is manager.transform_te for loader in test_loaders)
    assert_names(blocks["Test transforms (applied)"], manager.transform_te)
    # The paper recipe, as it runs: bicubic resize, 10-pixel pad before the crop, torchreid's erasing.
    train_text = "\n".join(blocks["Train transforms (applied)"])
    assert "interpolation=bicubic" in train_text and "Pad(padding=10" in train_text
    assert "torchreid.RandomErasing(probability=0.5, mean=[0.5, 0.5, 0.5], sl=0.02, sh=0.4, r1=0.3)" in train_text
    memory = "PCL memory transforms (every training image, each epoch)"
    if engine == "softmax":
        assert memory not in blocks  # torchreid's engine has no memory pass
    else:
        assert_names(blocks[memory], manager.transform_memory)
    diffusion = blocks.get("Diffusion view transforms (encoded once into the latent cache)")
    assert (diffusion is not None) == (engine == "dcac")
    if diffusion:
        size = build_config(demo_config_path("dcac"), []).dcac.diffusion.image_size  # 64 in the demo
        assert diffusion[0].startswith(f"Resize(size=({size}, {size}), interpolation=bicubic")
    assert out.count("Train transforms (applied)") == 1  # printed once
    assert reid_data.datamanager.build_transforms is reid_data.transforms.build_transforms  # put back


def test_diffusion_view_in_every_batch_is_printed_beside_the_reid_view(data_root, capsys):
    manager, out = datamanager_output(capsys, "dcac", data_root, "dcac.diffusion.latent_cache", "False")
    blocks = printed_blocks(out)
    train = manager.train_loader.dataset.transform
    assert isinstance(train, TwoViewTransform)
    assert_names(blocks["Train transforms (applied), Re-ID view"], train.reid_transform)
    assert_names(blocks["Train transforms (applied), diffusion view (in every batch)"], train.diffusion_transform)
    assert not [title for title in blocks if "latent cache" in title]


def test_evaluation_alone_prints_the_test_transforms_only(data_root, capsys):
    _, out = datamanager_output(capsys, "baseline", data_root, "test.evaluate", "True",
                                "dcac.test_resize_interpolation", "bilinear")
    blocks = printed_blocks(out)
    assert list(blocks) == ["Test transforms (applied)"]
    assert "interpolation=bilinear" in blocks["Test transforms (applied)"][0]


def test_torchreid_steps_are_described_by_their_settings():
    transforms = build_reid_transforms(32, 16, ["random_crop", "random_patch", "random_erase"], [0.5] * 3, [0.5] * 3)
    text = describe_transforms([("Train", transforms.train)])
    assert "object at" not in text
    assert "torchreid.Random2DTranslation(height=32, width=16, p=0.5, interpolation=bicubic)" in text
    assert "torchreid.RandomPatch(prob_happen=0.5" in text and "patchpool" not in text  # state, not a setting


class Holder:
    value = "original"


@pytest.mark.parametrize("owner", [Holder(), {"value": "original"}], ids=["attribute", "mapping entry"])
def test_swapped_puts_the_value_back_also_on_error(owner):
    read = (lambda: owner["value"]) if isinstance(owner, dict) else (lambda: owner.value)
    with pytest.raises(RuntimeError):
        with swapped(owner, "value", "replacement"):
            assert read() == "replacement"
            raise RuntimeError("building failed")
    assert read() == "original"


# ---------------------------------------------------------------- failed start


def train(save_dir, *args) -> int:
    """``dcac train`` of the tiny baseline; ``args`` are flags, then KEY VALUE pairs."""
    return main(["train", "--config-file", demo_config_path("baseline"), *args, "data.save_dir", str(save_dir),
                 "train.max_epoch", "1", "train.print_freq", "100"])


def missing_dataset(tmp_path, data_root):
    return ["-s", "market1501", "-t", "market1501", "--root", str(tmp_path / "no-data")]


def missing_weights(tmp_path, data_root):
    return ["--root", data_root, "model.load_weights", str(tmp_path / "absent.pth")]


@pytest.mark.parametrize("cause", [missing_dataset, missing_weights])
def test_run_failing_before_it_starts_leaves_nothing_in_a_folder_it_created(cause, data_root, tmp_path, capsys):
    save_dir = tmp_path / "runs" / "m2ms"
    assert train(save_dir, *cause(tmp_path, data_root)) == 2
    captured = capsys.readouterr()
    assert "Show configuration" in captured.out  # the run had begun: its log was being written
    assert {missing_dataset: "does not exist", missing_weights: "not found"}[cause] in captured.err
    assert not (tmp_path / "runs").exists()
    assert run_status(str(save_dir)) == "new"


def test_failed_start_in_an_existing_folder_keeps_its_log_with_the_error_then_a_good_run_works(
        data_root, tmp_path, capsys):
    save_dir = tmp_path / "run"
    save_dir.mkdir()
    assert train(save_dir, *missing_dataset(tmp_path, data_root)) == 2
    capsys.readouterr()
    (log,) = os.listdir(save_dir)
    assert log.startswith("train.log-")
    text = (save_dir / log).read_text()
    assert "Show configuration" in text and "DatasetLayoutError" in text and "does not exist" in text
    # Not a run: no config for the trained-run tools, nothing done or to resume.
    assert run_status(str(save_dir)) == "new"
    with pytest.raises(CheckpointError, match="No config.yaml"):
        load_trained_model(str(save_dir))

    assert train(save_dir, "--root", data_root) == 0
    assert os.path.isfile(save_dir / "config.yaml")
    assert build_config(str(save_dir / "config.yaml")).data.save_dir == str(save_dir)
    assert run_status(str(save_dir)) == "done"
    model, cfg, _ = load_trained_model(str(save_dir))
    assert cfg.model.name == "clip_vit_tiny"
