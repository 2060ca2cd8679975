"""The DCAC authors' eight released models, evaluated by one command (``dcac experiments released``)
on the targets of their protocols, with their numbers from Tables 2-4 beside.

The checkpoints are written in the authors' key layout (REFERENCE-NOTES, "Checkpoints of the
reference": ``encoder.image_encoder.*`` with OpenAI CLIP's visual key names, ``encoder.fc.weight``,
``encoder.bnneck.*``, then ``denoiser.*``), with tiny weights, under the authors' file names.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Dict

import pytest
import torch
from conftest import train_error
from dataset_writers import write_cuhk03_mat, write_dukemtmcreid, write_market1501, write_msmt17_lists

from dcac_config.loading import build_config
from dcac_config.shipped import shipped_run_lists
from dcac_plugin.cli import main
from dcac_plugin.models.clip_reid import clip_vit_tiny
from dcac_plugin.tools.experiments import collect, load_paper_results, read_run_list
from dcac_plugin.utils.checkpoint import load_model_weights

# The authors' file names (their README's Checkpoints table) and what each was trained on.
RELEASED = {
    "source_ma.pth": ["market1501"], "source_d.pth": ["dukemtmcreid"], "source_ms.pth": ["msmt17"],
    "source_c3.pth": ["cuhk03"], "source_ma+d+ms.pth": ["market1501", "dukemtmcreid", "msmt17"],
    "source_ma+d+c3.pth": ["market1501", "dukemtmcreid", "cuhk03"],
    "source_ma+ms+c3.pth": ["market1501", "msmt17", "cuhk03"],
    "source_d+ms+c3.pth": ["dukemtmcreid", "msmt17", "cuhk03"],
}
DATASETS = ["market1501", "dukemtmcreid", "msmt17", "cuhk03"]
# Training identities of the tiny datasets written below (MSMT17 with list_val: the same 3).
IDENTITIES = {"market1501": 4, "dukemtmcreid": 3, "msmt17": 3, "cuhk03": 4}
WIDTH, LAYERS, PATCH, HEIGHT_WIDTH = 64, 2, 16, (64, 32)  # clip_vit_tiny at 64 x 32: 4 x 2 patches
TINY = ["use_gpu", "False", "model.name", "clip_vit_tiny", "data.height", str(HEIGHT_WIDTH[0]), "data.width",
        str(HEIGHT_WIDTH[1]), "data.workers", "0", "test.batch_size", "64"]


def targets_of(sources):
    """Tables 2-3: a single-source model is tested on the other three; Table 4: the held-out one."""
    return [d for d in DATASETS if d not in sources]


def openai_visual(generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """An OpenAI-CLIP visual state dict (its key names) of the tiny ViT, random."""
    def randn(*shape):
        return 0.02 * torch.randn(*shape, generator=generator)

    grid = (HEIGHT_WIDTH[0] // PATCH) * (HEIGHT_WIDTH[1] // PATCH)
    state = {"conv1.weight": randn(WIDTH, 3, PATCH, PATCH), "class_embedding": randn(WIDTH),
             "positional_embedding": randn(1 + grid, WIDTH), "ln_pre.weight": torch.ones(WIDTH),
             "ln_pre.bias": torch.zeros(WIDTH)}
    for block in range(LAYERS):
        prefix = f"transformer.resblocks.{block}."
        state.update({prefix + "ln_1.weight": torch.ones(WIDTH), prefix + "ln_1.bias": torch.zeros(WIDTH),
                      prefix + "attn.in_proj_weight": randn(3 * WIDTH, WIDTH),
                      prefix + "attn.in_proj_bias": randn(3 * WIDTH),
                      prefix + "attn.out_proj.weight": randn(WIDTH, WIDTH), prefix + "attn.out_proj.bias": randn(WIDTH),
                      prefix + "ln_2.weight": torch.ones(WIDTH), prefix + "ln_2.bias": torch.zeros(WIDTH),
                      prefix + "mlp.c_fc.weight": randn(4 * WIDTH, WIDTH), prefix + "mlp.c_fc.bias": randn(4 * WIDTH),
                      prefix + "mlp.c_proj.weight": randn(WIDTH, 4 * WIDTH), prefix + "mlp.c_proj.bias": randn(WIDTH)})
    state.update({"ln_post.weight": torch.ones(WIDTH), "ln_post.bias": torch.zeros(WIDTH), "proj": randn(WIDTH, WIDTH)})
    return state


def authors_checkpoint(identities: int, seed: int) -> "OrderedDict[str, torch.Tensor]":
    """A state_dict in the authors' layout: the Re-ID encoder, then their diffusion part."""
    generator = torch.Generator().manual_seed(seed)
    state = OrderedDict(("encoder.image_encoder." + key, value) for key, value in openai_visual(generator).items())
    state["encoder.fc.weight"] = 0.001 * torch.randn(identities, WIDTH, generator=generator)
    state.update({"encoder.bnneck.weight": 1 + 0.1 * torch.randn(WIDTH, generator=generator),
                  "encoder.bnneck.bias": torch.zeros(WIDTH),
                  "encoder.bnneck.running_mean": 0.1 * torch.randn(WIDTH, generator=generator),
                  "encoder.bnneck.running_var": 0.5 + torch.rand(WIDTH, generator=generator),
                  "encoder.bnneck.num_batches_tracked": torch.tensor(1000)})
    lora = "denoiser.unet.model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q."
    state.update({lora + "weight": torch.randn(320, 320), lora + "bias": torch.randn(320),
                  lora + "lora_A": torch.randn(32, 320), lora + "lora_B": torch.zeros(320, 32),
                  "denoiser.prompts": torch.randn(identities, 768),
                  "denoiser.vae.encoder.conv_in.weight": torch.randn(128, 3, 3, 3)})
    return state


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """The paper's four datasets (tiny, torchreid's layouts) and a folder of the eight files."""
    root = tmp_path_factory.mktemp("paper-data")
    write_market1501(root), write_dukemtmcreid(root), write_msmt17_lists(root), write_cuhk03_mat(root)
    folder = tmp_path_factory.mktemp("authors-checkpoints")
    for seed, (name, sources) in enumerate(RELEASED.items()):
        torch.save(authors_checkpoint(sum(IDENTITIES[s] for s in sources), seed), folder / name)
    return str(root), str(folder)


def test_released_run_list_evaluates_each_model_on_its_protocols_targets(released, tmp_path):
    root, folder = released
    out = tmp_path / "out"
    assert main(["experiments", "--root", root, "--out", str(out), "released", "model.load_weights_dir", folder,
                 *TINY]) == 0
    results = {}
    for name, sources in RELEASED.items():
        run = out / name[:-len(".pth")]
        summary = json.load(open(run / "results.json"))
        assert summary["engine"] == "dcac" and summary["sources"] == sources
        assert summary["targets"] == targets_of(sources) and sorted(summary["results"]) == sorted(targets_of(sources))
        assert all(0 < metrics["mAP"] <= 1 for metrics in summary["results"].values())
        log = open(next(run.glob("test.log-*"))).read()
        # the whole encoder from the file (classifier included: same identities), the diffusion part ignored
        assert f"Loaded weights from {os.path.join(folder, name)}\n" in log
        assert not (run / "model").exists()  # evaluation only: nothing trained, no checkpoint written
        results[name] = summary["results"]
    table = open(out / "results.md").read().splitlines()[2:]
    assert len(table) == 4 * 3 + 4 and all(row.endswith("| done |") for row in table)
    assert any(row.startswith("| source_ma+d+ms | MA+D+MS->C3 | dcac model=clip_vit_tiny | "
                              f"{100 * results['source_ma+d+ms.pth']['cuhk03']['mAP']:.1f} |") for row in table)


def test_authors_layout_evaluates_as_the_same_weights_under_our_names(released, tmp_path):
    root, folder = released
    theirs = torch.load(os.path.join(folder, "source_c3.pth"))
    renamed = {"encoder.image_encoder.": "backbone.", "encoder.bnneck.": "bnneck.", "encoder.fc.": "classifier."}
    ours = {new + key[len(old):]: value for key, value in theirs.items()
            for old, new in renamed.items() if key.startswith(old)}
    model = clip_vit_tiny(num_classes=4, img_size=HEIGHT_WIDTH)
    load_model_weights(model, os.path.join(folder, "source_c3.pth"))
    loaded = model.state_dict()
    assert set(loaded) == set(ours)  # every tensor of the model from the file; the denoiser's ignored
    assert all(torch.equal(loaded[key], ours[key]) for key in ours)
    torch.save(ours, tmp_path / "ours.pth")
    summaries = []
    for weights, save_dir in ((os.path.join(folder, "source_c3.pth"), "theirs"), (str(tmp_path / "ours.pth"), "ours")):
        assert main(["train", "--config-file", "released/source_c3", "--root", root, *TINY, "model.load_weights",
                     weights, "data.save_dir", str(tmp_path / save_dir)]) == 0
        summaries.append(json.load(open(tmp_path / save_dir / "results.json"))["results"])
    assert summaries[0] == summaries[1]


def test_released_configs_set_the_papers_numbers_beside(tmp_path):
    rows = collect(read_run_list(shipped_run_lists()["released"]), str(tmp_path))
    paper = {(row["variant"], tuple(sorted(row["sources"])), row["target"]): (row["mAP"], row["rank1"])
             for row in load_paper_results()}
    expected = [(name[:-len(".pth")], target) for name, sources in RELEASED.items() for target in targets_of(sources)]
    assert sorted((row["run"], row["target"]) for row in rows) == sorted(expected)
    for row in rows:
        sources = RELEASED[row["run"] + ".pth"]
        assert row["variant"] == "dcac" and row["sources"] == "+".join(sources)
        assert (row["paper_mAP"], row["paper_rank1"]) == paper[("dcac", tuple(sorted(sources)), row["target"])]
        assert row["paper_tables"].split(",")[0] == ("4" if len(sources) > 1 else
                                                      "2" if sources[0] in ("market1501", "dukemtmcreid") else "3")
    for name, sources in RELEASED.items():
        cfg = build_config(f"released/{name[:-len('.pth')]}", [])
        assert cfg.test.evaluate is True and cfg.model.load_weights == name and cfg.model.pretrained is False
        assert cfg.dcac.test_resize_interpolation == ("bicubic" if len(sources) > 1 else "bilinear")


def test_a_released_file_not_in_the_folder_is_named_before_any_work(tmp_path, capsys):
    message = train_error(tmp_path, capsys, "model.load_weights", "source_ma.pth", "model.load_weights_dir",
                          str(tmp_path / "checkpoints"))
    assert message == (f"model.load_weights source_ma.pth is not in model.load_weights_dir {tmp_path / 'checkpoints'}. "
                       "Set model.load_weights_dir to the folder holding it, or give model.load_weights as a full "
                       "path.")
