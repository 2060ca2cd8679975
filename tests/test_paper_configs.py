"""The shipped configs of every protocol and ablation: complete, valid, and with the paper's
source-dependent hyper-parameters (section 5.2 and the reference notes)."""
import glob
import os

import pytest

from dcac_config.generators.paper import render_paper_configs
from dcac_config.generators.protocols import DATASETS, paper_variant
from dcac_config.generators.rendering import PAPER_CONFIG_DIR
from dcac_config.loading import build_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The paper's own configs (the toolbox group, torchreid's models, has tests/test_toolbox_models.py; the
# classical DG benchmark and the released models' evaluations have test_classical_dg.py, test_released_checkpoints.py).
CONFIGS = sorted(p for p in glob.glob(os.path.join(PAPER_CONFIG_DIR, "*", "*.yaml"))
                 if os.path.basename(os.path.dirname(p)) not in ("toolbox", "classical", "released"))
# The paper's rules, written out independently of protocols.py.
RANK = {"market1501": 8, "dukemtmcreid": 8, "cuhk03": 8, "msmt17": 32}
TAU_C = {"market1501": 0.6, "dukemtmcreid": 0.6, "cuhk03": 0.1, "msmt17": 1.0}


def load(relative):
    return build_config(os.path.join(PAPER_CONFIG_DIR, relative), [])


def test_shipped_files_are_exactly_the_generated_ones():
    rendered = render_paper_configs()
    shipped = {os.path.relpath(p, PAPER_CONFIG_DIR) for p in glob.glob(os.path.join(PAPER_CONFIG_DIR, "*", "*"))}
    assert shipped == set(rendered)
    for relative, text in rendered.items():
        with open(os.path.join(PAPER_CONFIG_DIR, relative), encoding="utf-8") as handle:
            assert handle.read() == text, f"{relative} was edited by hand; run scripts/make_paper_configs.py"
    # The repository's configs/ is the package's folder.
    assert os.path.samefile(os.path.join(REPO, "configs"), PAPER_CONFIG_DIR)


def test_all_twelve_single_source_pairs_with_baseline_counterparts():
    for engine in ("baseline", "dcac"):
        pairs = set()
        for source in DATASETS:
            for target in DATASETS:
                if source == target:
                    continue
                cfg = load(f"single/{engine}_{source}_to_{target}.yaml")
                assert cfg.engine == engine and list(cfg.data.sources) == [source]
                assert list(cfg.data.targets) == [target]
                pairs.add((source, target))
        assert len(pairs) == 12


@pytest.mark.parametrize("source,target", [(s, t) for s in DATASETS for t in DATASETS if s != t])
def test_single_source_dcac_follows_section_5_2(source, target):
    cfg = load(f"single/dcac_{source}_to_{target}.yaml")
    assert cfg.dcac.lora.rank == RANK[source] and cfg.dcac.condition.temperature == TAU_C[source]
    assert cfg.dcac.finetune == "lora" and cfg.dcac.condition.mode == "correlation"
    # The paper recipe (section 5.2) comes with the engine.
    assert cfg.model.name == "clip_vit_b16" and (cfg.data.height, cfg.data.width) == (256, 128)
    assert cfg.train.batch_size == 64 and cfg.sampler.num_instances == 4 and cfg.train.max_epoch == 60
    assert cfg.train.lr == 5e-6 and cfg.dcac.diffusion.image_size == 128 and cfg.dcac.lambda_dif == 1.0
    if "cuhk03" in (source, target):
        assert cfg.cuhk03.labeled_images is False and cfg.cuhk03.classic_split is False  # CUHK03-NP detected
    assert paper_variant(cfg) == "dcac"


@pytest.mark.parametrize("target", DATASETS)
def test_multi_source_leave_one_out(target):
    for engine in ("baseline", "dcac"):
        cfg = load(f"multi/{engine}_multi_to_{target}.yaml")
        assert list(cfg.data.sources) == [d for d in DATASETS if d != target]
        assert list(cfg.data.targets) == [target] and cfg.data.combineall is False  # training splits only
        if engine == "dcac":
            assert cfg.dcac.lora.rank == 32 and cfg.dcac.condition.temperature == 1.0


def test_ablations_vary_one_thing_each():
    expected = {"finetune": {"frozen", "partial1", "partial2", "full", "scratch"},
                "condition": {"instance", "class"}, "transform": {"silu", "bn", "mlp"}}
    seen = {}
    for path in glob.glob(os.path.join(PAPER_CONFIG_DIR, "ablations", "*.yaml")):
        cfg = build_config(path, [])
        source, target = cfg.data.sources[0], cfg.data.targets[0]
        assert (source, target) in {("market1501", "msmt17"), ("msmt17", "market1501")}
        variant = paper_variant(cfg)
        assert variant.count("=") == 1, variant  # exactly one setting differs from the main config
        key, value = variant.split(" ")[1].split("=")
        seen.setdefault((source, key), set()).add(value)
        assert cfg.dcac.condition.temperature == TAU_C[source]
    for source in ("market1501", "msmt17"):
        for key, values in expected.items():
            assert seen[(source, key)] == values
        assert seen[(source, "rank")] | {str(RANK[source])} == {"8", "16", "32", "64"}


def test_run_lists_name_existing_configs_for_every_table():
    lists = sorted(glob.glob(os.path.join(PAPER_CONFIG_DIR, "lists", "*.txt")))
    assert [os.path.basename(p) for p in lists] == (["classical.txt", "released.txt"]
                                                    + [f"table{n}.txt" for n in (10, 2, 3, 4, 5, 7, 9)] + ["toolbox.txt"])
    counts = {}
    for path in lists:
        entries = [line.strip() for line in open(path) if line.strip() and not line.startswith("#")]
        assert all(os.path.isfile(os.path.join(os.path.dirname(path), e)) for e in entries)
        counts[os.path.basename(path)] = len(entries)
    assert counts["table2.txt"] == counts["table3.txt"] == 12 and counts["table4.txt"] == 8
    assert counts["table5.txt"] == 2 * (2 + 5) and counts["table9.txt"] == 2 * (2 + 3)
    assert counts["toolbox.txt"] == 2 * 12 * 3  # models x single-source pairs x engines


def test_every_shipped_config_builds():
    assert len(CONFIGS) == 24 + 8 + 2 * (5 + 2 + 3 + 3)  # singles, multis, ablations
    for path in CONFIGS:
        build_config(path, [])


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def test_configs_with_an_msmt17_source_train_on_list_train_plus_list_val():
    with_msmt17 = 0
    for path in CONFIGS:
        cfg, text = build_config(path, []), read(path)
        if "msmt17" in cfg.data.sources:
            with_msmt17 += 1
            assert cfg.msmt17.train_with_val is True, path
            assert "msmt17:\n  train_with_val: True" in text, f"{path} does not say it explicitly"
        else:
            assert "train_with_val" not in text, path
    # MS -> 3 targets and 3 of the 4 leave-one-out settings, x 2 engines; 13 MS->MA ablations
    assert with_msmt17 == 3 * 2 + 3 * 2 + 13


def test_test_time_resize_follows_the_authors_loaders():
    seen = set()
    for path in CONFIGS:
        cfg = build_config(path, [])
        multi_source = len(cfg.data.sources) > 1
        # Single-source: make_val_dataloader (bilinear); multi-source: make_dataloader_sd's (bicubic).
        assert cfg.dcac.test_resize_interpolation == ("bicubic" if multi_source else "bilinear"), path
        assert cfg.dcac.resize_interpolation == "bicubic", path  # training and the PCL memory
        assert f"test_resize_interpolation: {cfg.dcac.test_resize_interpolation}" in read(path), path
        seen.add(multi_source)
    assert seen == {False, True}


def test_paper_configs_train_with_the_authors_precision_and_seed():
    for path in CONFIGS:
        cfg = build_config(path, [])
        # auto: fp16 autocast with a gradient scaler on any GPU (tests/test_performance.py).
        assert (cfg.train.amp, cfg.train.seed) == ("auto", 1234), path
        # The authors' cudnn.deterministic alone does not make a run repeat; our strict mode is opt-in.
        assert cfg.train.deterministic is False, path


def test_toolbox_group_seeds_as_its_engine_does():
    toolbox = sorted(glob.glob(os.path.join(PAPER_CONFIG_DIR, "toolbox", "*.yaml")))
    engines = set()
    for path in toolbox:
        cfg = build_config(path, [])
        engines.add(cfg.engine)
        # The paper recipe's engines take the authors' seed; torchreid's own keep its default.
        assert cfg.train.seed == (1234 if cfg.engine in ("baseline", "dcac") else 1), path
    assert {"baseline", "dcac", "softmax"} <= engines
