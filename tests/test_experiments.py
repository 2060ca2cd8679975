"""``dcac experiments``: run lists run in order, done runs are skipped, interrupted ones
resumed, and the results are tabulated beside the paper's numbers (paper_results.csv)."""
import contextlib
import csv
import io
import json
import os
import shutil
from collections import Counter

import pytest
import torch
from tree_guard import digests as file_digests

from dcac_cli import build_parser
from dcac_cli.dispatch import command_handler
from dcac_config.errors import ConfigError
from dcac_config.generators.protocols import DATASETS, lora_rank_for, paper_variant
from dcac_config.loading import build_config
from dcac_config.shipped import demo_config_path, shipped_run_lists
from dcac_plugin.diffusion.adaptation import FINETUNE_MODES
from dcac_plugin.diffusion.conditioning import CONDITION_MODES, CONDITION_TRANSFORMS
from dcac_plugin.tools.experiments import (collect, load_paper_results, read_run_list, run_dir, run_experiments,
                                           run_status)
from dcac_plugin.utils.checkpoint import load_checkpoint, model_state_dict

TINY = ["train.max_epoch", "1", "train.print_freq", "100"]
RUNS = ("demo_baseline", "demo_softmax")


def dcac_experiments(*argv):
    """``dcac experiments ARGV`` in-process; returns (exit code, printed output)."""
    args = build_parser().parse_args(["experiments", *argv])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = command_handler(args)(args)
    return code, printed.getvalue()


def markdown_rows(path):
    """The Markdown table's data rows as lists of cells."""
    lines = open(path, encoding="utf-8").read().splitlines()[2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def model_files(save_dir):
    folder = os.path.join(save_dir, "model")
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}


@pytest.fixture(scope="module")
def first_pass(data_root, tmp_path_factory):
    """The two tiny demo runs, listed once by absolute and once by relative path."""
    folder = tmp_path_factory.mktemp("experiments")
    run_list = folder / "runs.txt"
    run_list.write_text(f"# two tiny runs\n{demo_config_path('baseline')}\n\n"
                        f"{os.path.relpath(demo_config_path('softmax'), folder)}  # relative to the list\n")
    out = str(folder / "out")
    code, printed = dcac_experiments("--out", out, "--root", data_root, str(run_list), *TINY)
    return {"list": str(run_list), "out": out, "code": code, "printed": printed, "data_root": data_root}


def test_run_list_runs_each_config_and_tabulates_its_results(first_pass):
    assert first_pass["code"] == 0
    assert "[1/2]" in first_pass["printed"] and "[2/2]" in first_pass["printed"]
    out = first_pass["out"]
    table = {row[0]: row for row in markdown_rows(os.path.join(out, "results.md"))}
    with open(os.path.join(out, "results.csv"), encoding="utf-8", newline="") as handle:
        saved = {row["run"]: row for row in csv.DictReader(handle)}
    assert sorted(table) == sorted(saved) == sorted(RUNS)
    for run in RUNS:
        assert run_status(os.path.join(out, run)) == "done"
        metrics = json.load(open(os.path.join(out, run, "results.json")))["results"]["synthetic_b"]
        model = {"demo_baseline": "clip_vit_tiny", "demo_softmax": "osnet_x0_25"}[run]
        # the variant names the model where it is not the paper's CLIP ViT-B/16
        assert table[run][1:5] == ["synthetic_a->synthetic_b", f"{run.split('_')[1]} model={model}",
                                   f"{100 * metrics['mAP']:.1f}", f"{100 * metrics['rank1']:.1f}"]
        assert table[run][5:] == ["-", "-", "-", "-", "done"]  # no paper row for the synthetic demo
        assert saved[run]["mAP"] == f"{100 * metrics['mAP']:.2f}"
    assert "| config | setting | variant | mAP | R1 |" in first_pass["printed"]


def test_done_runs_are_skipped(first_pass):
    out = first_pass["out"]
    before = {run: model_files(os.path.join(out, run)) for run in RUNS}
    code, printed = dcac_experiments("--out", out, "--root", first_pass["data_root"], first_pass["list"], *TINY)
    assert code == 0
    assert printed.count("skip (done)") == 2 and printed.count("(done)\nskip (done)") == 2
    assert {run: model_files(os.path.join(out, run)) for run in RUNS} == before


def test_interrupted_run_is_resumed_not_retrained(first_pass, tmp_path):
    save_dir = run_dir(str(tmp_path), "demo_baseline.yaml")
    shutil.copytree(os.path.join(first_pass["out"], "demo_baseline"), save_dir)
    finished = json.load(open(os.path.join(save_dir, "results.json")))
    os.remove(os.path.join(save_dir, "results.json"))
    assert run_status(save_dir) == "interrupted"
    latest = os.path.join(save_dir, "model", "latest.pth.tar")
    weights = model_state_dict(load_checkpoint(latest))

    code, printed = dcac_experiments("--out", str(tmp_path), "--root", first_pass["data_root"],
                                     demo_config_path("baseline"), *TINY)
    assert code == 0
    assert "(interrupted)" in printed and f"Resumed from {latest} at epoch 1" in printed
    assert run_status(save_dir) == "done"
    # max_epoch 1 was reached before the interruption: the resumed run only evaluates.
    resumed = model_state_dict(load_checkpoint(latest))
    assert all(torch.equal(weights[key], resumed[key]) for key in weights)
    assert json.load(open(os.path.join(save_dir, "results.json")))["results"] == finished["results"]


def test_run_stopped_before_its_first_checkpoint_starts_over_in_its_folder(first_pass, tmp_path):
    save_dir = run_dir(str(tmp_path), "demo_baseline.yaml")
    shutil.copytree(os.path.join(first_pass["out"], "demo_baseline"), save_dir)
    os.remove(os.path.join(save_dir, "results.json"))
    shutil.rmtree(os.path.join(save_dir, "model"))
    assert run_status(save_dir) == "new"  # its config.yaml and event file are left: a run the launcher would refuse

    code, printed = dcac_experiments("--out", str(tmp_path), "--root", first_pass["data_root"],
                                     demo_config_path("baseline"), *TINY)
    assert code == 0
    assert f"starting over: {save_dir} holds a run that stopped before its first checkpoint" in printed
    assert "data.overwrite True: deleted the earlier run's outputs" in printed
    assert run_status(save_dir) == "done"


def write_config(folder, name, text):
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def fake_results(out, config, mAP, rank1, *opts):
    """What the launcher writes for a run (config.yaml at its start, results.json at its end),
    without running it."""
    save_dir = run_dir(str(out), config)
    cfg = build_config(config, [*opts, "data.save_dir", save_dir])
    os.makedirs(save_dir)
    with open(os.path.join(save_dir, "config.yaml"), "w") as handle:
        handle.write(cfg.dump())
    results = {t: {"rank1": rank1, "mAP": mAP, "mINP": 0.1, "epoch": 60} for t in cfg.data.targets}
    with open(os.path.join(save_dir, "results.json"), "w") as handle:
        json.dump({"engine": cfg.engine, "model": cfg.model.name, "sources": list(cfg.data.sources),
                   "targets": list(cfg.data.targets), "save_dir": save_dir, "world_size": 1, "results": results}, handle)


def test_collect_sets_results_beside_the_papers(tmp_path):
    single = write_config(tmp_path, "ma_to_ms", "engine: dcac\ndata:\n  sources: [market1501]\n  targets: [msmt17]\n")
    # Another registered layout of MSMT17 is the same paper dataset.
    folder_layout = write_config(tmp_path, "ms_to_ma_baseline",
                                 "engine: baseline\ndata:\n  sources: [msmt17_folder]\n  targets: [market1501]\n")
    # Multi-source DCAC uses rank 32 (the paper's default there); not run yet.
    multi = write_config(tmp_path, "to_ms", "engine: dcac\ndata:\n  sources: [market1501, dukemtmcreid, cuhk03]\n"
                                            "  targets: [msmt17]\ndcac:\n  lora:\n    rank: 32\n")
    out = tmp_path / "out"
    fake_results(out, single, mAP=0.25, rank1=0.5)
    fake_results(out, folder_layout, mAP=0.5, rank1=0.75)

    code, printed = dcac_experiments("--out", str(out), "--collect-only", single, folder_layout, multi)
    assert code == 0
    table = {row[0]: row[1:] for row in markdown_rows(out / "results.md")}
    assert table["ma_to_ms"] == ["MA->MS", "dcac", "25.0", "50.0", "23.4", "52.1", "+1.6", "-2.1", "done"]
    assert table["ms_to_ma_baseline"] == ["MS->MA", "baseline", "50.0", "75.0", "51.0", "76.5", "-1.0", "-1.5", "done"]
    assert table["to_ms"] == ["MA+D+C3->MS", "dcac", "-", "-", "27.5", "56.7", "-", "-", "new"]
    assert "| ma_to_ms | MA->MS | dcac | 25.0 | 50.0 | 23.4 | 52.1 | +1.6 | -2.1 | done |" in printed

    rows = {row["run"]: row for row in collect([single, multi], str(out))}
    assert rows["ma_to_ms"]["paper_tables"] == "2,5,7,9,10"
    assert rows["ma_to_ms"]["delta_mAP"] == pytest.approx(1.6)
    assert rows["to_ms"]["status"] == "new" and rows["to_ms"]["mAP"] is None


def test_failed_run_stops_the_list_or_is_recorded_with_keep_going(tmp_path):
    first = write_config(tmp_path, "first", "engine: baseline\ndata:\n  sources: [market1501]\n  targets: [dukemtmcreid]\n")
    second = write_config(tmp_path, "second", "engine: dcac\ndata:\n  sources: [market1501]\n  targets: [dukemtmcreid]\n")
    out = tmp_path / "out"

    def runner(cfg):
        if cfg.engine == "baseline":
            raise RuntimeError("out of memory")
        fake_results(out, second, mAP=0.5, rank1=0.7)

    with pytest.raises(RuntimeError, match="out of memory"):
        run_experiments([first, second], str(out), runner=runner)
    assert [row[-1] for row in markdown_rows(out / "results.md")] == ["new", "new"]  # tables of what finished

    records = run_experiments([first, second], str(out), keep_going=True, runner=runner)
    assert [r["action"] for r in records] == ["failed", "ran"]
    assert records[0]["error"] == "RuntimeError: out of memory"
    assert [row[-1] for row in markdown_rows(out / "results.md")] == ["new", "done"]


@pytest.fixture
def two_done(tmp_path):
    """Two configs whose runs are done in <tmp>/out with the default settings."""
    first = write_config(tmp_path, "first", "engine: dcac\ndata:\n  sources: [market1501]\n  targets: [msmt17]\n")
    second = write_config(tmp_path, "second", "engine: baseline\ndata:\n  sources: [market1501]\n  targets: [msmt17]\n")
    out = tmp_path / "out"
    fake_results(out, first, mAP=0.25, rank1=0.5)
    fake_results(out, second, mAP=0.2, rank1=0.4)
    return first, second, out


def refuse_runs(cfg):
    raise AssertionError(f"a run started: {cfg.data.save_dir}")


def test_done_runs_of_other_settings_stop_the_list_before_any_run(two_done, monkeypatch, capsys):
    """Rerun with other overrides, the old runs are not this setting's results: refused, naming
    the keys and both values, and the two ways on; nothing in the folder changes."""
    import dcac_cli
    import dcac_plugin.run.launcher

    first, second, out = two_done
    monkeypatch.setattr(dcac_plugin.run.launcher, "run", refuse_runs)
    before = file_digests(out)
    code = dcac_cli.main(["experiments", "--out", str(out), first, second, "train.lr", "0.5",
                          "dcac.pcl.temperature", "0.9"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err == (f"dcac: error: {out / 'first'} holds a run of other settings than asked now (dcac.pcl.temperature "
                   "0.01 in the run, 0.9 now; train.lr 5.0e-06 in the run, 0.5 now), so its results are not this "
                   f"setting's; so do 1 more run folder of this list ({out / 'second'}). To keep those runs, pass "
                   "another --out; to replace them, pass --overwrite (each such run starts over in its folder: its "
                   "outputs are deleted when it starts; its logs and any other files stay).\n")
    assert file_digests(out) == before  # no tables written either


def test_where_and_how_a_run_ran_are_no_other_settings(two_done):
    first, second, out = two_done
    records = run_experiments([first, second], str(out), ["data.root", "/elsewhere", "data.workers", "8",
                                                           "train.print_freq", "1", "test.eval_freq", "5"],
                              runner=refuse_runs)
    assert [(r["status"], r["action"]) for r in records] == [("done", "skipped")] * 2


def test_overwrite_starts_over_the_runs_of_other_settings_only(two_done, capsys):
    first, second, out = two_done
    ran = []

    def runner(cfg):
        ran.append(cfg)
        assert cfg.data.overwrite and not cfg.model.resume and cfg.train.lr == 0.5

    records = run_experiments([first, second], str(out), runner=runner, overwrite=True)
    assert [r["action"] for r in records] == ["skipped", "skipped"]  # the same settings: nothing to replace

    with open(out / "second" / "config.yaml", "w") as handle:  # the second folder now holds a run of lr 0.5
        handle.write(build_config(second, ["train.lr", "0.5", "data.save_dir", str(out / "second")]).dump())
    records = run_experiments([first, second], str(out), ["train.lr", "0.5"], runner=runner, overwrite=True)
    assert [(r["status"], r["action"]) for r in records] == [("other settings", "ran"), ("done", "skipped")]
    assert [cfg.data.save_dir for cfg in ran] == [str(out / "first")]
    assert (f"starting over (--overwrite): {out / 'first'} holds a run of other settings (train.lr 5.0e-06 in the "
            "run, 0.5 now)") in capsys.readouterr().out


def test_overwrite_replaces_the_run_outputs_and_keeps_the_users_other_files(first_pass, tmp_path):
    save_dir = run_dir(str(tmp_path), "demo_baseline.yaml")
    shutil.copytree(os.path.join(first_pass["out"], "demo_baseline"), save_dir)
    with open(os.path.join(save_dir, "notes.txt"), "w") as handle:
        handle.write("mine")
    logs = sorted(name for name in os.listdir(save_dir) if name.startswith("train.log-"))
    code, printed = dcac_experiments("--out", str(tmp_path), "--root", first_pass["data_root"], "--overwrite",
                                     demo_config_path("baseline"), *TINY, "train.lr", "0.002")
    assert code == 0 and "(other settings)" in printed
    assert "train.lr 0.001 in the run, 0.002 now" in printed
    assert build_config(os.path.join(save_dir, "config.yaml")).train.lr == 0.002 and run_status(save_dir) == "done"
    assert open(os.path.join(save_dir, "notes.txt")).read() == "mine"
    assert set(logs) < {name for name in os.listdir(save_dir) if name.startswith("train.log-")}  # old logs stay


def test_a_foreign_run_in_a_list_folder_is_refused_not_continued_or_deleted(tmp_path, capsys):
    """A folder named like a config of the list holds some other run: of another engine, or with
    no config.yaml at all (its settings unknown); neither is skipped, resumed or started over."""
    config = write_config(tmp_path, "ma_to_ms", "engine: dcac\ndata:\n  sources: [market1501]\n  targets: [msmt17]\n")
    (tmp_path / "mine").mkdir()
    other = write_config(tmp_path / "mine", "ma_to_ms", "engine: baseline\ndata:\n  sources: [market1501]\n  "
                                                        "targets: [msmt17]\n")
    out = tmp_path / "out"
    fake_results(out, other, mAP=0.3, rank1=0.6)
    os.remove(out / "ma_to_ms" / "results.json")
    os.makedirs(out / "ma_to_ms" / "model")
    torch.save({"epoch": 3}, out / "ma_to_ms" / "model" / "latest.pth.tar")  # interrupted: would be resumed
    before = file_digests(out)
    with pytest.raises(ConfigError, match=r"ma_to_ms holds a run of other settings than asked now \(engine baseline "
                                          r"in the run, dcac now\)"):
        run_experiments([config], str(out), runner=refuse_runs)
    os.remove(out / "ma_to_ms" / "config.yaml")
    with pytest.raises(ConfigError, match=r"ma_to_ms holds a run of other settings than asked now \(it holds "
                                          r"model/latest.pth.tar but no readable config.yaml, so its settings are "
                                          r"unknown\)"):
        run_experiments([config], str(out), runner=refuse_runs)
    assert file_digests(out) == {name: digest for name, digest in before.items() if name != "ma_to_ms/config.yaml"}


def test_collect_only_shows_runs_of_other_settings_without_their_numbers(two_done):
    first, second, out = two_done
    code, printed = dcac_experiments("--out", str(out), "--collect-only", first, second, "train.lr", "0.5")
    assert code == 0
    table = {row[0]: row[1:] for row in markdown_rows(out / "results.md")}
    assert table["first"][2:] == ["-", "-", "23.4", "52.1", "-", "-", "other settings"]
    assert table["second"][-1] == "other settings" and table["second"][2:4] == ["-", "-"]


def test_run_list_errors_name_the_line_and_file(tmp_path):
    run_list = tmp_path / "runs.txt"
    run_list.write_text(f"{demo_config_path('baseline')}\n# comment\nmissing.yaml\n")
    with pytest.raises(ConfigError, match=r"runs.txt, line 3: config file not found: .*missing.yaml"):
        read_run_list(str(run_list))
    with pytest.raises(ConfigError, match="Run list not found"):
        read_run_list(str(tmp_path / "absent.txt"))
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(demo_config_path("baseline"), other / "demo_baseline.yaml")
    with pytest.raises(ConfigError, match="share the run folder 'demo_baseline'"):
        run_experiments([demo_config_path("baseline"), str(other / "demo_baseline.yaml")], str(tmp_path / "out"),
                        runner=lambda cfg: None)
    with pytest.raises(ConfigError, match="options go before them"):
        dcac_experiments(demo_config_path("baseline"), "--keep-going")


# ------------------------------------------------------------------ paper_results.csv

PAPER = load_paper_results()


def paper_row(table, variant, sources, target):
    matches = [r for r in PAPER if (r["table"], r["variant"], "+".join(r["sources"]), r["target"])
               == (table, variant, sources, target)]
    assert len(matches) == 1
    return matches[0]["mAP"], matches[0]["rank1"]


def test_paper_results_known_values():
    assert Counter(r["table"] for r in PAPER) == {2: 12, 3: 12, 4: 4, 5: 14, 7: 8, 9: 8, 10: 10}
    assert paper_row(2, "dcac", "market1501", "msmt17") == (23.4, 52.1)
    assert paper_row(2, "baseline", "market1501", "dukemtmcreid") == (47.8, 67.3)
    assert paper_row(3, "dcac", "cuhk03", "msmt17") == (17.8, 47.3)
    assert paper_row(4, "dcac", "market1501+dukemtmcreid+cuhk03", "msmt17") == (27.5, 56.7)
    assert paper_row(4, "dcac", "dukemtmcreid+msmt17+cuhk03", "market1501") == (56.7, 80.0)
    assert paper_row(5, "dcac finetune=partial1", "msmt17", "market1501") == (47.1, 74.6)
    assert paper_row(7, "dcac condition=class", "market1501", "msmt17") == (22.6, 51.2)
    assert paper_row(9, "dcac rank=8", "msmt17", "market1501") == (51.4, 77.3)
    assert paper_row(9, "dcac rank=16", "market1501", "msmt17") == (22.1, 50.7)
    assert paper_row(10, "dcac transform=mlp", "msmt17", "market1501") == (50.5, 76.2)


def variant_config(variant, sources):
    """A config that asks for ``variant`` on ``sources``."""
    engine, *changes = variant.split()
    opts = ["engine", engine, "data.sources", str(sources), "dcac.lora.rank", str(lora_rank_for(sources))]
    keys = {"finetune": "dcac.finetune", "condition": "dcac.condition.mode", "transform": "dcac.condition.transform",
            "rank": "dcac.lora.rank"}
    for change in changes:
        key, value = change.split("=")
        opts += [keys[key], value]
    return build_config(None, opts)


def test_paper_results_rows_are_valid_variants_and_settings():
    allowed = {"finetune": set(FINETUNE_MODES) - {"lora"}, "condition": set(CONDITION_MODES) - {"correlation"},
               "transform": set(CONDITION_TRANSFORMS) - {"none"}, "rank": {"8", "16", "32", "64"}}
    for row in PAPER:
        assert set(row["sources"]) <= set(DATASETS) and row["target"] in DATASETS
        assert row["target"] not in row["sources"] and len(row["sources"]) in (1, 3)
        engine, *changes = row["variant"].split()
        assert engine in ("baseline", "dcac")
        assert all(change.split("=")[1] in allowed[change.split("=")[0]] for change in changes)
        assert paper_variant(variant_config(row["variant"], row["sources"])) == row["variant"]
        assert 0 < row["mAP"] < 100 and 0 < row["rank1"] < 100
    keys = [(r["table"], r["variant"], tuple(r["sources"]), r["target"]) for r in PAPER]
    assert len(keys) == len(set(keys))
    # The tables repeat the baseline and DCAC rows: the same numbers every time.
    numbers = {}
    for row in PAPER:
        numbers.setdefault((row["variant"], tuple(row["sources"]), row["target"]), set()).add(
            (row["mAP"], row["rank1"]))
    assert all(len(found) == 1 for found in numbers.values())


def test_shipped_table_lists_are_reachable_by_name_and_match_paper_rows(tmp_path):
    lists = shipped_run_lists()
    assert set(lists) == {"table2", "table3", "table4", "table5", "table7", "table9", "table10", "toolbox", "classical",
                          "released"}
    rows = collect(read_run_list(lists["table5"]), str(tmp_path))
    # Table 5 on MA->MS and MS->MA: baseline, LoRA (= dcac) and five fine-tuning variants, each with the paper's numbers.
    assert len(rows) == 14 and all(row["paper_mAP"] is not None for row in rows)
    lora = [r for r in rows if r["variant"] == "dcac" and r["setting"] == "MA->MS"]
    assert len(lora) == 1 and (lora[0]["paper_mAP"], lora[0]["paper_rank1"]) == (23.4, 52.1)
    # torchreid's models: no paper row for any of them
    toolbox = collect(read_run_list(lists["toolbox"]), str(tmp_path))
    assert len(toolbox) == 72 and all(row["paper_mAP"] is None for row in toolbox)
