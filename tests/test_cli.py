"""The ``dcac`` command line: a parser that needs no torch, names that agree with the
implementation, and one form for every user error (``dcac: error: ...``, exit status 2)."""
import argparse
import os
import subprocess
import sys
from importlib import metadata

import pytest
from PIL import Image

import dcac_cli
from dcac_cli.choices import (AMP_CHOICES, BENCH_SCHEDULES, CONFIG_KEYS, CONFIG_SECTIONS, DEMO_RUN_SUMMARIES, DEMO_RUNS,
                              ENGINE_SUMMARIES, RUN_LISTS)
from dcac_cli.dispatch import command_handler
from dcac_config.defaults import get_default_config
from dcac_config.shipped import demo_config_path, shipped_configs, shipped_run_lists
from dcac_plugin.benchmarks import train_bench
from dcac_plugin.registry import ENGINES
from dcac_plugin.speed import performance

HEAVY = {"torch", "torchreid", "diffusers", "open_clip", "dcac_plugin"}


def run_python(code, *args, cwd):
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_building_the_parser_imports_nothing_heavy(tmp_path):
    probe = ("import sys, dcac_cli; dcac_cli.build_parser(); "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r}))")
    done = run_python(probe, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_help_of_every_command_needs_nothing_heavy(tmp_path):
    probe = ("import sys, contextlib, io, dcac_cli\n"
             "for argv in sys.argv[1:]:\n"
             "    with contextlib.redirect_stdout(io.StringIO()):\n"
             "        try:\n"
             "            dcac_cli.main(argv.split() + ['--help'])\n"
             "        except SystemExit as done:\n"
             "            assert done.code == 0, argv\n"
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r}))")
    done = run_python(probe, *[" ".join(path) for path in command_paths()], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_console_script_is_the_light_entry_point():
    (script,) = [entry for entry in metadata.entry_points(group="console_scripts") if entry.name == "dcac"]
    assert script.value == "dcac_cli:main"


def commands(parser=None, prefix=()):
    """(path, parser) of every command and sub-command, e.g. (('bench', 'train'), its parser)."""
    parser = parser or dcac_cli.build_parser()
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += commands(child, prefix + (name,))
    return found


def command_paths():
    return [path for path, _ in commands()]


# Positional arguments each command that runs something requires, as placeholders.
REQUIRED = {("extract",): ["RUN", "IMAGES"], ("export",): ["RUN", "--format", "onnx"], ("visualize", "ranked"): ["RUN"],
            ("visualize", "gradcam"): ["RUN", "IMAGE", "--class-index", "0"], ("visualize", "curves"): ["RUN"]}


def test_every_command_names_an_implementation_that_exists():
    parser = dcac_cli.build_parser()
    leaves = [path for path, child in commands()
              if not any(isinstance(action, argparse._SubParsersAction) for action in child._actions)]
    assert {path[0] for path in leaves} == {"train", "config", "configs", "stats", "bench", "experiments", "extract",
                                            "export", "visualize", "demo"}
    for path in leaves:
        argv = list(path) + REQUIRED.get(path, [])
        if path == ("experiments",):
            argv.append("table2")
        assert callable(command_handler(parser.parse_args(argv))), path


def test_parser_choices_are_the_implementations():
    assert AMP_CHOICES == performance.AMP_CHOICES
    assert BENCH_SCHEDULES == train_bench.SCHEDULES
    assert set(ENGINE_SUMMARIES) == set(ENGINES.names())
    assert {f"demo_{run}" for run in DEMO_RUNS} == {n for n in shipped_configs() if n.startswith("demo_")}
    assert all(os.path.isfile(demo_config_path(run)) for run in DEMO_RUNS)
    assert set(DEMO_RUN_SUMMARIES) == set(DEMO_RUNS)
    assert set(RUN_LISTS) == set(shipped_run_lists())
    defaults = get_default_config()
    assert set(CONFIG_SECTIONS) == {key for key, value in defaults.items() if isinstance(value, dict)}
    assert set(CONFIG_KEYS) == {key for key, value in defaults.items() if not isinstance(value, dict)}


def test_train_help_describes_engines_and_examples(capsys):
    with pytest.raises(SystemExit) as done:
        dcac_cli.main(["train", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "upstream" in out and "torchreid" in out
    lines = out.splitlines()
    for engine, what in ENGINE_SUMMARIES.items():
        assert any(line.split()[:1] == [engine] and what in line for line in lines), engine
    assert out.count("  dcac train --config-file single/") == 2


# ----------------------------------------------- KEY VALUE overrides after list flags

ALL = list(DEMO_RUNS)
OVERRIDES = ["train.max_epoch", "2"]
# argv -> (list flag values, opts) as parsed: dcac demo's engines, dcac train's (sources, targets, transforms).
DEMO_FORMS = {
    "after --engines": (["--engines", "baseline", "dcac", "train.max_epoch", "2"], ["baseline", "dcac"], OVERRIDES),
    "after --engines and --": (["--engines", "baseline", "dcac", "--", "train.max_epoch", "2"], ["baseline", "dcac"],
                               OVERRIDES),
    "alone": (["train.max_epoch", "2"], ALL, OVERRIDES),
    "after --": (["--", "train.max_epoch", "2"], ALL, OVERRIDES),
    "after other flags": (["--engines", "dcac", "--root", "r", "train.max_epoch", "2"], ["dcac"], OVERRIDES),
    "split by flags": (["--engines", "softmax", "train.max_epoch", "2", "--root", "r", "train.lr", "-0.1"],
                       ["softmax"], OVERRIDES + ["train.lr", "-0.1"]),
    "a dcac.* key after dcac": (["--engines", "dcac", "dcac.lambda_dif", "0.5"], ["dcac"], ["dcac.lambda_dif", "0.5"]),
    "none": (["--engines", "baseline"], ["baseline"], []),
}
LAUNCHER_FORMS = {
    "after -t": (["-s", "a", "-t", "b", "c", "train.max_epoch", "2"], (["a"], ["b", "c"], None), OVERRIDES),
    "after -t and --": (["-s", "a", "-t", "b", "--", "train.max_epoch", "2"], (["a"], ["b"], None), OVERRIDES),
    "between -s and -t, and trailing": (["-s", "a", "train.max_epoch", "2", "-t", "b", "data.root", "x"],
                                        (["a"], ["b"], None), OVERRIDES + ["data.root", "x"]),
    "top-level keys after --transforms": (["--transforms", "random_flip", "engine", "dcac", "use_gpu", "False"],
                                          (None, None, ["random_flip"]), ["engine", "dcac", "use_gpu", "False"]),
    "a misspelt key of a known section": (["-t", "b", "train.max_epohc", "2"], (None, ["b"], None),
                                          ["train.max_epohc", "2"]),
    "upstream's form": (["-s", "a", "-t", "b", "--root", "r", "train.max_epoch", "2"], (["a"], ["b"], None), OVERRIDES),
}


@pytest.mark.parametrize("form", sorted(DEMO_FORMS))
def test_demo_reads_overrides_in_every_form(form):
    argv, engines, opts = DEMO_FORMS[form]
    args = dcac_cli.build_parser().parse_args(["demo"] + argv)
    assert (args.engines, args.opts) == (engines, opts)


@pytest.mark.parametrize("command", ["train", "config", "stats"])
@pytest.mark.parametrize("form", sorted(LAUNCHER_FORMS))
def test_launcher_lists_end_where_the_overrides_begin(command, form):
    argv, lists, opts = LAUNCHER_FORMS[form]
    args = dcac_cli.build_parser().parse_args([command] + argv)
    assert ((args.sources, args.targets, args.transforms), args.opts) == (lists, opts)


@pytest.mark.parametrize("separator", [[], ["--"]])
def test_overrides_after_the_targets_reach_the_config(capsys, separator):
    code = dcac_cli.main(["config", "-s", "synthetic_a", "-t", "synthetic_b"] + separator
                         + ["train.max_epoch", "3", "test.rerank", "True"])
    assert code == 0
    out = capsys.readouterr().out
    assert "  max_epoch: 3\n" in out and "  rerank: true\n" in out
    assert "  targets:\n  - synthetic_b\n" in out


# ----------------------------------------------------------------- user errors

@pytest.fixture
def one_image(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (16, 32)).save(folder / "a.jpg")
    return str(folder)


BAD_INPUT = {
    "no command": ([], "required: command"),
    "train: missing config": (["train", "--config-file", "nowhere.yaml"], "Config file not found: nowhere.yaml"),
    "config: misspelt shipped name": (["config", "--config-file", "single/dcac_market1501_to_msmt1"],
                                      "single/dcac_market1501_to_msmt17"),
    "config: unknown key": (["config", "train.lrr", "0.1"], "Did you mean 'train.lr'"),
    "stats: missing config": (["stats", "--config-file", "nowhere"], "Config file not found"),
    "configs: nothing matches": (["configs", "no-such-thing"], "No shipped config or run list"),
    "demo: unknown engine": (["demo", "--engines", "nope"], "invalid choice: 'nope' (choose from softmax, dcac_osnet, baseline, dcac"),
    "demo: misspelt engine before overrides": (["demo", "--engines", "baseline", "dcca", "train.max_epoch", "2"],
                                               "invalid choice: 'dcca'"),
    "demo: no engine before overrides": (["demo", "--engines", "train.max_epoch", "2"],
                                         "expected at least one RUN before the KEY VALUE overrides"),
    "demo: option after overrides": (["demo", "train.max_epoch", "2", "--engines", "baseline"],
                                     "option --engines after the KEY VALUE overrides: options go before them"),
    "train: no dataset before overrides": (["train", "-s", "train.max_epoch", "2"],
                                           "argument -s/--sources: expected at least one DATASET before"),
    "train: override taken as a dataset": (["train", "--config-file", "demo_baseline", "-t", "synthetic_b",
                                            "trian.max_epoch", "1"], "put -- before the overrides"),
    "demo: unknown key": (["demo", "--save-dir", "{tmp}", "train.lrr", "0.1"], "Did you mean 'train.lr'"),
    "bench: unknown amp": (["bench", "train", "--amp", "nope"], "invalid choice: 'nope'"),
    "bench: unknown device": (["bench", "train", "--device", "nonsense"], "Unknown device 'nonsense'"),
    "bench: unknown key": (["bench", "train", "train.cpu_matmul_convolution", "False"],
                           "Did you mean 'train.cpu_matmul_convolutions'"),
    "experiments: unknown table": (["experiments", "--out", "{tmp}", "table99"], "table9"),
    "experiments: missing config": (["experiments", "--out", "{tmp}", "nowhere.yaml"], "Config file not found"),
    "extract: missing run": (["extract", "{tmp}/no-run", "{images}"], "No run directory or checkpoint at"),
    "extract: missing images": (["extract", "{tmp}/no-run", "{tmp}/no-images"], "No image folder or list file"),
    "export: missing run": (["export", "{tmp}/no-run", "--format", "onnx"], "No run directory or checkpoint at"),
    "export: unknown format": (["export", "{tmp}/no-run", "--format", "tflite"], "invalid choice: 'tflite'"),
    "visualize ranked: missing run": (["visualize", "ranked", "{tmp}/no-run"], "No run directory or checkpoint at"),
    "visualize curves: no events": (["visualize", "curves", "{tmp}"], "No TensorBoard event file"),
    "visualize: no action": (["visualize"], "required: action"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_user_errors_end_in_one_form(case, tmp_path, one_image, monkeypatch, capsys):
    argv, expected = BAD_INPUT[case]
    monkeypatch.chdir(tmp_path)  # whatever a command would write relative to the cwd lands here
    argv = [arg.format(tmp=tmp_path, images=one_image) for arg in argv]
    try:
        code = dcac_cli.main(argv)
    except SystemExit as done:  # argparse's errors
        code = done.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("dcac: error: ") and expected in err.splitlines()[0]
    assert "Traceback" not in err


def test_failed_runs_of_a_list_exit_1_in_the_same_form(tmp_path, monkeypatch, capsys):
    import dcac_plugin.run.launcher

    def failing_run(cfg):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(dcac_plugin.run.launcher, "run", failing_run)
    code = dcac_cli.main(["experiments", "--out", str(tmp_path), "--keep-going", demo_config_path("baseline")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("dcac: error: 1 of 1 runs failed: ") and "RuntimeError: out of memory" in err
    assert os.path.isfile(tmp_path / "results.md")  # the tables are written all the same


def test_a_command_process_prints_no_torchreid_warning_and_resolves_names_anywhere(tmp_path):
    """The installed entry point from a directory without configs/: the shipped name works, and
    stderr stays empty (torchreid's Cython warning is silenced at our import of it)."""
    done = run_python("import sys, dcac_cli; sys.exit(dcac_cli.main())", "config", "--config-file",
                      "single/dcac_market1501_to_msmt17", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "engine: dcac" in done.stdout and "- msmt17" in done.stdout
