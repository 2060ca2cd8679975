"""Shipped configs by name: after a plain ``pip install``, from any directory, every place that
takes a config path also takes ``single/dcac_market1501_to_msmt17``; a real file wins."""
import glob
import os
import re

import pytest

from dcac_cli import main
from dcac_config.errors import ConfigError
from dcac_config.loading import build_config
from dcac_config.shipped import CONFIG_DIR, resolve_config, resolve_run_list, shipped_run_lists

NAME = "single/dcac_market1501_to_msmt17"
PACKAGED = os.path.join(CONFIG_DIR, "paper", "single", "dcac_market1501_to_msmt17.yaml")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The README and the docs pages it links to, which hold the detail.
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A current directory without the repository's configs/."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("text", [NAME, NAME + ".yaml", "configs/" + NAME, "configs/" + NAME + ".yaml"])
def test_a_name_is_the_packaged_config(elsewhere, text):
    assert os.path.samefile(resolve_config(text), PACKAGED)
    assert build_config(text).dump() == build_config(PACKAGED).dump()


def test_config_command_takes_a_name(elsewhere, capsys):
    assert main(["config", "--config-file", NAME]) == 0
    assert capsys.readouterr().out.strip() == build_config(PACKAGED).dump().strip()


def test_demo_configs_by_name(elsewhere):
    for engine in ("softmax", "baseline", "dcac"):
        assert build_config(f"demo_{engine}").engine == engine


def test_an_existing_file_wins_over_a_name(elsewhere):
    local = elsewhere / "single" / "dcac_market1501_to_msmt17.yaml"
    local.parent.mkdir()
    local.write_text("engine: baseline\ntrain:\n  max_epoch: 3\n")
    assert resolve_config(f"{NAME}.yaml") == f"{NAME}.yaml"
    cfg = build_config(f"{NAME}.yaml")
    assert cfg.engine == "baseline" and cfg.train.max_epoch == 3
    assert build_config(NAME).engine == "dcac"  # no file of that name: the shipped one


def test_unknown_name_names_the_nearest_shipped_ones(elsewhere):
    with pytest.raises(ConfigError, match=r"not found: single/dcac_market1501_to_msmt1\b.*Nearest shipped names: "
                                          r"single/dcac_market1501_to_msmt17.*`dcac configs`"):
        build_config("single/dcac_market1501_to_msmt1")
    with pytest.raises(ConfigError, match="Config file not found: nowhere.yaml"):
        resolve_config("nowhere.yaml")


@pytest.mark.parametrize("text", ["table2", "table2.txt", "lists/table2.txt", "configs/lists/table2.txt"])
def test_run_lists_by_name(elsewhere, text):
    assert resolve_run_list(text) == shipped_run_lists()["table2"]


def test_experiments_take_names_from_anywhere(elsewhere, capsys):
    assert main(["experiments", "--out", "out", "--collect-only", NAME, "configs/lists/table9.txt"]) == 0
    rows = (elsewhere / "out" / "results.md").read_text().splitlines()[2:]
    # The named config and table 9's ten runs, among them the named one: once.
    assert len(rows) == 10 and sum("| dcac_market1501_to_msmt17 |" in row for row in rows) == 1
    assert "23.4" in next(row for row in rows if "| dcac_market1501_to_msmt17 |" in row)  # the paper's mAP


def shipped_yaml_names():
    """Every shipped config's name, from the package folder itself."""
    names = set()
    for path in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True):
        relative = os.path.relpath(path, CONFIG_DIR).replace(os.sep, "/")
        names.add(relative[len("paper/"):-5] if relative.startswith("paper/") else relative[:-5])
    return names


def listed(out):
    return {line.strip() for line in out.splitlines() if line.startswith("  ") and " " not in line.strip()}


def test_configs_lists_every_shipped_config_and_run_list(elsewhere, capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert listed(out) == shipped_yaml_names() and len(listed(out)) == 24 + 8 + 26 + 72 + 2 + 8 + 4
    for group in ("single (24):", "multi (8):", "ablations (26):", "toolbox (72):", "classical (2):", "released (8):",
                  "demo (4):"):
        assert group in out
    lists = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(CONFIG_DIR, "paper", "lists", "*.txt"))}
    others = ["toolbox", "released", "classical"]
    tables = sorted(lists - set(others), key=lambda name: int(name[len("table"):]))
    assert re.search(r"run lists of dcac experiments \(10\):\n  (.+)", out).group(1).split() == tables + others


def test_configs_filter(elsewhere, capsys):
    assert main(["configs", "msmt17"]) == 0
    shown = listed(capsys.readouterr().out)
    assert shown == {name for name in shipped_yaml_names() if "msmt17" in name} and len(shown) == 40 + 36


def test_readme_config_names_resolve_from_any_directory(elsewhere):
    """Every config the README and its docs pages pass to --config-file or to dcac experiments works
    without a clone."""
    text = ""
    for page in PAGES:
        with open(page, encoding="utf-8") as handle:
            text += handle.read() + "\n"
    named = set(re.findall(r"--config-file ([\w.-]+/\S+|demo_\w+)", text)) | set(re.findall(r"dcac experiments .*? (\S+\.yaml)", text))
    named = {name.strip("`") for name in named if "..." not in name and name.strip("`[]") not in ("F", "X")}
    assert named, "no config named in the README or docs/"
    for name in named:
        assert resolve_config(name), name
