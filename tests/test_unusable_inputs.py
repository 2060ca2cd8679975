"""Inputs that used to end in a traceback or a misleading message (issue 26, POOR items): lock files,
config nulls and types, files that are no weights, a broken latent cache, empty dataset folders,
broken Stable Diffusion configs, offline toolbox weights, tool arguments and hints.

Each case checks the message (the problem and the fix), the exit status and what was left."""
import json
import os
import shutil
import socket

import pytest
import torch
from conftest import refuse_download, train_error
from dataset_writers import write_market1501, write_msmt17_lists
from test_no_overwrite import digests

from dcac_config.layouts import DatasetLayoutError, check_dataset_layout
from dcac_config.run_folder.run_lock import LOCK_NAME
from dcac_config.shipped import demo_config_path
from dcac_plugin.cli import main
from dcac_plugin.utils import hub


def refused(capsys, argv) -> str:
    """The message ``dcac ARGV`` fails with, after checking exit status 2, one line, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    line = err[err.index("dcac: error: "):]
    assert err.count("dcac: error: ") == 1 and line.count("\n") == 1 and "Traceback" not in err, err
    return line[len("dcac: error: "):-1]


def train_args(save_dir, root, *opts, config="baseline") -> list:
    return ["train", "--config-file", demo_config_path(config), "--root", str(root), "data.save_dir", str(save_dir),
            *opts]


# ------------------------------------------------------------------------- lock files

@pytest.mark.parametrize("content", [
    {"pid": 99999999999}, {"pid": -1}, {"pid": 0}, {"pid": "12"}, {"pid": True}],
    ids=["absurd pid", "negative pid", "pid 0", "pid as text", "pid true"])
def test_a_lock_naming_no_possible_process_is_refused_in_one_line(content, data_root, tmp_path, capsys):
    save_dir = tmp_path / "run"
    save_dir.mkdir()
    lock = save_dir / LOCK_NAME
    lock.write_text(json.dumps({**content, "host": socket.gethostname(), "started": "2025-01-01 00:00:00"}))
    before = digests(save_dir)
    assert refused(capsys, train_args(save_dir, data_root)) == (
        f"data.save_dir {save_dir} is locked by {lock}, whose owner cannot be read. If no run uses this folder, "
        f"delete {lock} and start again; otherwise set data.save_dir to another folder.")
    assert digests(save_dir) == before


def test_a_folder_where_the_lock_goes_is_refused_in_one_line(data_root, tmp_path, capsys):
    save_dir = tmp_path / "run"
    (save_dir / LOCK_NAME).mkdir(parents=True)
    (save_dir / LOCK_NAME / "notes.txt").write_text("mine")
    assert refused(capsys, train_args(save_dir, data_root)) == (
        f"data.save_dir {save_dir} cannot be locked for this run: {save_dir / LOCK_NAME} is a folder, not a lock "
        f"file. It is not a lock of ours; move or delete {save_dir / LOCK_NAME} and start again, or set "
        "data.save_dir to another folder.")
    assert digests(save_dir) == {os.path.join(LOCK_NAME, "notes.txt"): digests(save_dir / LOCK_NAME)["notes.txt"]}


# ------------------------------------------------------------------- config values

@pytest.mark.parametrize("text, expected", [
    ("train:\n  lr: null\n", "train.lr takes a number, not None (an empty value): give it one (its default is "),
    ("train:\n  max_epoch: null\n", "train.max_epoch takes a whole number, not None (an empty value)"),
    ("data:\n  sources: null\n", "data.sources takes a list, not None (an empty value)"),
    ("model:\n  resume: null\n", "model.resume takes text ('' for none), not None (an empty value)"),
    ("train:\n  max_epoch: 1.5\n", "train.max_epoch takes a whole number, not 1.5."),
    ("train:\n  lr: fast\n", "train.lr takes a number, not 'fast'."),
    ("data:\n  height: true\n", "data.height takes a whole number, not True."),
], ids=["lr null", "max_epoch null", "list null", "text null", "float for int", "text for float", "bool for int"])
def test_nulls_and_wrong_types_in_a_config_file_are_one_line(text, expected, tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text(text)
    message = train_error(tmp_path, capsys, config=str(config))
    assert message.startswith(f"Bad value in {config}: {expected}")


def test_null_on_the_command_line_is_one_line(tmp_path, capsys):
    assert train_error(tmp_path, capsys, "train.lr", "None").startswith(
        "Bad value on the command line: train.lr takes a number, not 'None' (an empty value)")


def test_a_whole_number_where_a_number_goes_is_taken_as_one(tmp_path):
    from dcac_config.loading import build_config

    config = tmp_path / "cfg.yaml"
    config.write_text("train:\n  lr: 1\n")
    assert build_config(str(config)).train.lr == 1.0
    assert isinstance(build_config(None, ["train.lr", "2"]).train.lr, float)


# ------------------------------------------------------------ files that are no weights

@pytest.mark.parametrize("content, kind", [
    (b"not weights\n", "a text file beginning 'not weights'"),
    (b"", "empty (0 bytes)"),
    (b'{"visual.proj": [1, 2]}', "a JSON file beginning '{\"visual.proj\": [1, 2]}'"),
], ids=["text", "empty", "json"])
def test_clip_weights_that_are_no_weights_file_are_named_as_what_they_are(content, kind, data_root, tmp_path,
                                                                          capsys):
    weights = tmp_path / "ViT-B-16.pt"
    weights.write_bytes(content)
    save_dir = tmp_path / "run"
    assert refused(capsys, train_args(save_dir, data_root, "model.pretrained", "True", "dcac.clip_weights",
                                      str(weights))) == (
        f"dcac.clip_weights {weights} is not a weights file: it is {kind}. Set dcac.clip_weights to OpenAI's "
        "ViT-B-16.pt, an open_clip checkpoint or a state dict (.pt, .pth, .bin, .safetensors), or to an open_clip "
        "tag such as openai.")
    assert not save_dir.exists()


def test_load_weights_on_a_config_file_says_it_is_no_checkpoint(baseline_run, data_root, tmp_path, capsys):
    config = os.path.join(baseline_run, "config.yaml")
    message = refused(capsys, train_args(tmp_path / "run", data_root, "model.load_weights", config))
    assert message.startswith(f"{config} is not a PyTorch checkpoint: it is a YAML or text file beginning ")
    assert message.endswith("Name a checkpoint file (e.g. <run>/model/best.pth.tar) or a run folder.")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def latent_cache(tiny_sd, data_root, tmp_path):
    """A latent cache as a dcac run writes it (``<save_dir>/latent_cache.pth``), of 4 training images."""
    import glob

    from diffusers import AutoencoderKL

    from dcac_plugin.data.views import diffusion_view_transform
    from dcac_plugin.diffusion.latent_cache import LatentCache, vae_fingerprint

    vae = AutoencoderKL.from_pretrained(tiny_sd, subfolder="vae")
    cache = LatentCache(str(tmp_path / "dcac-run" / "latent_cache.pth"), vae_fingerprint(vae, 128))
    paths = sorted(glob.glob(os.path.join(data_root, "synthetic_a", "bounding_box_train", "*.jpg")))[:4]
    assert cache.build(paths, vae, diffusion_view_transform(128)) == 4
    return cache, paths, vae


def test_the_latent_cache_given_as_weights_is_named_as_the_cache(latent_cache, baseline_run, data_root, tmp_path,
                                                                 capsys):
    cache, _, _ = latent_cache
    message = refused(capsys, train_args(tmp_path / "run", data_root, "model.load_weights", cache.path))
    assert message == (f"{cache.path} is a run's latent cache (VAE posteriors of its training images), not model "
                       "weights. Name the run folder or one of its checkpoints (model/best.pth.tar).")
    assert not (tmp_path / "run").exists()
    # The tools read weights the same way.
    output = tmp_path / "features.safetensors"
    shutil.copy(os.path.join(baseline_run, "config.yaml"), os.path.dirname(cache.path))
    assert refused(capsys, ["extract", cache.path, os.path.join(data_root, "synthetic_b", "query"), "--output",
                            str(output)]) == message
    assert not output.exists()


def test_a_truncated_latent_cache_is_named_as_the_cache_and_rebuilt(latent_cache, capsys):
    from dcac_plugin.data.views import diffusion_view_transform
    from dcac_plugin.diffusion.latent_cache import LatentCache

    cache, paths, vae = latent_cache
    with open(cache.path, "r+b") as handle:
        handle.truncate(os.path.getsize(cache.path) // 2)
    again = LatentCache(cache.path, cache.fingerprint)
    assert again.build(paths, vae, diffusion_view_transform(128)) == 4  # every entry encoded again
    out = capsys.readouterr().out
    assert (f"Latent cache {cache.path} cannot be read (truncated, corrupt, or not a latent cache); it only holds "
            "VAE posteriors of the training images, so it is rebuilt") in out
    assert LatentCache(cache.path, cache.fingerprint).load() == 4  # whole again
    assert torch.equal(again.lookup(paths)[0], cache.lookup(paths)[0])


# ------------------------------------------------------------------------- datasets

def test_an_empty_training_folder_is_named_before_torchreid_reads_it(tmp_path, capsys):
    write_market1501(tmp_path / "data")
    train_folder = tmp_path / "data" / "market1501" / "Market-1501-v15.09.15" / "bounding_box_train"
    for image in train_folder.iterdir():
        image.unlink()
    save_dir = tmp_path / "run"
    assert main(["train", "--config-file", demo_config_path("baseline"), "-s", "market1501", "-t", "market1501",
                 "--root", str(tmp_path / "data"), "data.save_dir", str(save_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dcac: error: Dataset 'market1501' is incomplete: {train_folder} holds no *.jpg image "
                          "other than junk (pid -1). Copy the dataset's images back there.\n")
    assert "Traceback" not in err and "Expected layout of dataset 'market1501'" in err
    assert not save_dir.exists()


def test_an_empty_msmt17_list_is_named(tmp_path):
    write_msmt17_lists(tmp_path)
    listing = tmp_path / "msmt17" / "MSMT17_V1" / "list_query.txt"
    listing.write_text("")
    with pytest.raises(DatasetLayoutError, match=f"{listing} lists no image"):
        check_dataset_layout("msmt17", str(tmp_path))
    (tmp_path / "msmt17" / "MSMT17_V1" / "list_val.txt").write_text("")  # may be empty: trained on only if asked
    listing.write_text("0000/0000_000_02_0303morning_0000_0.jpg 0\n")
    check_dataset_layout("msmt17", str(tmp_path))


def test_an_emptied_synthetic_dataset_is_generated_again(data_root, tmp_path):
    from dcac_plugin.data.synthetic import ensure_synthetic_dataset

    shutil.copytree(os.path.join(data_root, "synthetic_a"), tmp_path / "synthetic_a")
    train_folder = tmp_path / "synthetic_a" / "bounding_box_train"
    count = len(os.listdir(train_folder))
    shutil.rmtree(train_folder)
    train_folder.mkdir()
    ensure_synthetic_dataset(tmp_path, "synthetic_a")
    assert len(os.listdir(train_folder)) == count


# --------------------------------------------------------------- Stable Diffusion configs

def edited_sd(tiny_sd, tmp_path, part: str, edit) -> str:
    """A copy of the tiny SD folder whose ``part`` config (unet, vae, scheduler) is what ``edit`` makes
    of it: a dict (written as JSON) or the file's new text."""
    from dcac_plugin.diffusion.sources import CONFIG_FILES

    folder = shutil.copytree(tiny_sd, tmp_path / "sd")
    path = folder / CONFIG_FILES[part]
    edited = edit(json.loads(path.read_text()))
    path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    return str(folder)


def sd_refusal(capsys, data_root, tmp_path, folder) -> str:
    save_dir = tmp_path / "run"
    message = refused(capsys, train_args(save_dir, data_root, "dcac.diffusion.pretrained", folder, config="dcac"))
    assert not save_dir.exists()
    return message


def test_an_unknown_beta_schedule_is_named_with_its_file(tiny_sd, data_root, tmp_path, capsys):
    folder = edited_sd(tiny_sd, tmp_path, "scheduler", lambda c: {**c, "beta_schedule": "cosine"})
    assert sd_refusal(capsys, data_root, tmp_path, folder) == (
        "DCAC needs the Stable Diffusion v1.5 noise schedule; the scheduler config's beta_schedule 'cosine' is none "
        "that diffusers' DDPMScheduler knows (need 'scaled_linear'). Use the scheduler config of Stable Diffusion "
        f"v1.5 ({folder}/scheduler/scheduler_config.json).")


def test_a_unet_config_larger_than_memory_is_refused_before_any_allocation(tiny_sd, data_root, tmp_path, capsys,
                                                                           monkeypatch):
    from dcac_plugin.diffusion import config_checks

    """The reported case tried a 160 GB allocation, then said to download SD1.5; the sizes are counted on
    the meta device first (the test would need those gigabytes otherwise)."""
    folder = edited_sd(tiny_sd, tmp_path, "unet", lambda c: {**c, "block_out_channels": [32000, 64000]})
    monkeypatch.setattr(config_checks, "available_memory", lambda: 16 * 10 ** 9)
    message = sd_refusal(capsys, data_root, tmp_path, folder)
    assert message.startswith(f"The Stable Diffusion configs in {folder} describe 773.1 billion parameters (unet "
                              "773,140M, vae 0M: 3092.6 GB in float32), more than the 16.0 GB of memory free here; "
                              "SD1.5 has 0.94 billion. Check the sizes in ")
    assert "(block_out_channels, layers_per_block, ...), or restore it from the Stable Diffusion v1.5 release" in message


@pytest.mark.parametrize("edit, expected", [
    (lambda config: json.dumps(config)[:-1] + ",,}", "is not valid JSON (line 1, column"),
    (lambda config: "[1, 2]", "holds a JSON list, not an object of settings."),
    (lambda config: {**config, "down_block_types": "CrossAttnDownBlock2D"}, "does not describe a UNet2DConditionModel"),
], ids=["not JSON", "not an object", "a wrong field"])
def test_a_malformed_unet_config_is_named_with_its_file(edit, expected, tiny_sd, data_root, tmp_path, capsys):
    folder = edited_sd(tiny_sd, tmp_path, "unet", edit)
    message = sd_refusal(capsys, data_root, tmp_path, folder)
    assert message.startswith(f"Stable Diffusion config {folder}/unet/config.json {expected}")
    assert "huggingface.co" not in message.split("release (")[0]


def test_weights_that_do_not_fit_their_config_are_named_as_such(tiny_sd, data_root, tmp_path, capsys):
    folder = edited_sd(tiny_sd, tmp_path, "unet", lambda config: {key: value for key, value in config.items()
                                                                   if key in ("_class_name", "_diffusers_version")})
    assert sd_refusal(capsys, data_root, tmp_path, folder) == (
        f"The unet weights in {folder}/unet do not fit its config {folder}/unet/config.json (conv_in.bias is [32] in "
        "the weights, [320] by the config): the two must come from the same model. Restore the config that came "
        "with the weights, or use a complete Stable Diffusion v1.5 folder.")


# ----------------------------------------------------------- torchreid's ImageNet weights

@pytest.fixture
def offline_toolbox(tmp_path, monkeypatch):
    """An empty torch cache, no network, and torchreid's own download functions refused."""
    import gdown
    import torch.utils.model_zoo

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hub, "_probe_host", lambda origin, timeout: f"{origin} cannot be reached (URLError)")
    monkeypatch.setattr(gdown, "download", refuse_download)
    monkeypatch.setattr(torch.utils.model_zoo, "load_url", refuse_download)
    return tmp_path / "torch"


@pytest.mark.parametrize("model, url, cached", [
    ("osnet_x0_25", "https://drive.google.com/uc?id=1rb8UN5ZzPKRc_xvtHlyDh-cSz88YX9hs",
     "checkpoints/osnet_x0_25_imagenet.pth"),
    ("resnet18", "https://download.pytorch.org/models/resnet18-5c106cde.pth",
     "hub/checkpoints/resnet18-5c106cde.pth"),
], ids=["OSNet (Google Drive, gdown)", "ResNet (model_zoo)"])
def test_offline_toolbox_weights_name_the_file_its_url_the_cache_and_the_way_without(model, url, cached,
                                                                                     offline_toolbox, data_root,
                                                                                     tmp_path, capsys):
    save_dir = tmp_path / "run"
    target = offline_toolbox / cached
    host = url.split("/")[2]
    assert refused(capsys, train_args(save_dir, data_root, "model.name", model, "model.pretrained", "True",
                                      config="softmax")) == (
        f"torchreid's ImageNet weights for model {model} are not in its cache ({target}) and https://{host} cannot "
        f"be reached (URLError). Download {url} to {target} (TORCH_HOME moves torchreid's cache), or set "
        "model.pretrained False to start from a random initialisation.")
    assert not save_dir.exists() and not target.exists()


def test_cached_toolbox_weights_are_used_offline(offline_toolbox, monkeypatch):
    """A file in torchreid's cache is read as torchreid reads it: no probe, no download."""
    from torchreid import models

    from dcac_plugin.models.toolbox_weights import checked_toolbox_downloads

    monkeypatch.setattr(hub, "_probe_host", refuse_download)
    reference = models.build_model("osnet_x0_25", num_classes=10, pretrained=False)
    target = offline_toolbox / "checkpoints" / "osnet_x0_25_imagenet.pth"
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    with checked_toolbox_downloads("osnet_x0_25"):
        model = models.build_model("osnet_x0_25", num_classes=10, pretrained=True)
    assert torch.equal(model.conv1.conv.weight, reference.conv1.conv.weight)


# ------------------------------------------------------------------ tool arguments and hints

@pytest.mark.parametrize("argv, expected", [
    (["visualize", "ranked", "RUN", "--topk", "0"], "argument --topk: 0 is not a whole number of at least 1"),
    (["visualize", "ranked", "RUN", "--max-queries", "-1"], "argument --max-queries: -1 is not a whole number"),
    (["extract", "RUN", "IMAGES", "--batch-size", "0"], "argument --batch-size: 0 is not a whole number of at least 1"),
    (["extract", "RUN", "IMAGES", "--workers", "-2"], "argument --workers: -2 is not a whole number of at least 0"),
    (["visualize", "gradcam", "RUN", "x.jpg", "--class-index", "-1"], "argument --class-index: -1 is not a whole"),
], ids=["topk 0", "max-queries -1", "extract batch 0", "extract workers -2", "class-index -1"])
def test_tool_counts_are_checked_before_any_work(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(argv)
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.startswith(f"dcac: error: {expected}")


def test_an_onnx_opset_torch_cannot_write_is_refused_before_the_model_is_loaded(baseline_run, tmp_path, capsys,
                                                                                monkeypatch):
    import dcac_plugin.tools.inference
    from dcac_plugin.tools.export import onnx_opsets

    monkeypatch.setattr(dcac_plugin.tools.inference, "load_trained_model", refuse_download)
    lowest, highest = onnx_opsets()
    output = tmp_path / "encoder.onnx"
    assert refused(capsys, ["export", baseline_run, "--format", "onnx", "--output", str(output), "--opset",
                            "99999"]) == (
        f"--opset 99999: torch {torch.__version__} exports ONNX opsets {lowest} to {highest}; choose one of those "
        "(default 17).")
    assert not output.exists()


@pytest.fixture
def images_with_a_broken_one(tmp_path, data_root):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in sorted(os.listdir(os.path.join(data_root, "synthetic_b", "query")))[:3]:
        shutil.copy(os.path.join(data_root, "synthetic_b", "query", name), folder)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a whole jpeg")
    return folder, broken


def test_extract_and_gradcam_name_fixes_they_take(images_with_a_broken_one, baseline_run, tmp_path, capsys):
    folder, broken = images_with_a_broken_one
    output = tmp_path / "features.safetensors"
    message = refused(capsys, ["extract", baseline_run, str(folder), "--output", str(output)])
    assert message.startswith(f'Cannot read image "{broken}": truncated or corrupt')
    assert message.endswith(f"Fix: remove or replace the file, or leave it out of {folder}.")
    assert not output.exists()

    picture = tmp_path / "cam.png"
    message = refused(capsys, ["visualize", "gradcam", baseline_run, str(broken), "--class-index", "0", "--out",
                               str(picture)])
    assert message.endswith("Fix: replace the file, or leave it out of the images given to dcac visualize gradcam.")
    assert "skip_corrupt_images" not in message and not picture.exists()
