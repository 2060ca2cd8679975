"""``dcac`` answers what needs no model before it imports torch, torchreid, torchvision, diffusers,
peft or open_clip: the config listing and printing, every command's --help, and the errors of a
config. Each case runs in a fresh interpreter, which then reports the heavy
modules it holds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "torchreid", "torchvision", "diffusers", "peft", "open_clip", "dcac_plugin")

PROBE = textwrap.dedent("""
    import contextlib, io, json, sys
    from dcac_cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(sys.argv[1:])
        except SystemExit as exit:
            status = exit.code
    print(json.dumps({"status": status, "out": out.getvalue(), "err": err.getvalue(),
                      "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""").replace("HEAVY", repr(HEAVY))


def answer(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_probe_sees_a_heavy_import():
    """The probe can fail: a command that needs the model (dcac stats) does import torch."""
    found = answer("stats", "--config-file", "demo_baseline", "--batch-size", "2")
    assert found["status"] == 0 and "torch" in found["heavy"] and "dcac_plugin" in found["heavy"]


def test_listing_and_printing_configs_import_no_model():
    listed = answer("configs")
    assert listed["status"] == 0 and "single/dcac_market1501_to_msmt17" in listed["out"] and listed["heavy"] == []
    printed = answer("config", "--config-file", "single/dcac_market1501_to_msmt17", "train.lr", "1e-5")
    assert printed["status"] == 0 and printed["heavy"] == []
    assert "lr: 1.0e-05" in printed["out"] and "name: clip_vit_b16" in printed["out"]


HELP = [["--help"], ["train", "--help"], ["config", "--help"], ["configs", "--help"], ["stats", "--help"],
        ["bench", "--help"], ["bench", "train", "--help"], ["bench", "eval", "--help"], ["demo", "--help"],
        ["experiments", "--help"], ["extract", "--help"], ["export", "--help"], ["visualize", "--help"],
        ["visualize", "ranked", "--help"], ["visualize", "gradcam", "--help"], ["visualize", "curves", "--help"]]


@pytest.mark.parametrize("argv", HELP, ids=" ".join)
def test_every_help_imports_no_model(argv):
    found = answer(*argv)
    assert found["status"] == 0 and found["out"].startswith("usage: dcac") and found["heavy"] == []


def errors(tmp_path) -> dict:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  name: [unclosed\n")
    return {
        "config file not found": (["train", "--config-file", str(tmp_path / "none.yaml")], "none.yaml"),
        "shipped name misspelt": (["train", "--config-file", "single/dcac_market1501_to_msmt1"], "msmt17"),
        "YAML error": (["config", "--config-file", str(bad_yaml)], "bad.yaml"),
        "unknown key": (["train", "--config-file", "demo_baseline", "train.lrr", "1"], "train.lr"),
        "value of the wrong type": (["stats", "--config-file", "demo_baseline", "train.max_epoch", "many"],
                                    "train.max_epoch"),
        "value out of range": (["train", "--config-file", "demo_baseline", "train.lr", "-1"], "train.lr is -1"),
        "temperature out of range": (["stats", "--config-file", "demo_dcac", "dcac.pcl.temperature", "0"],
                                     "dcac.pcl.temperature"),
    }


CASES = ["config file not found", "shipped name misspelt", "YAML error", "unknown key", "value of the wrong type",
         "value out of range", "temperature out of range"]


@pytest.mark.parametrize("case", CASES)
def test_errors_that_need_no_model_come_before_any_model_import(case, tmp_path):
    argv, named = errors(tmp_path)[case]
    found = answer(*argv)
    lines = found["err"].strip().splitlines()
    assert found["status"] == 2 and lines[0].startswith("dcac: error: ") and named in found["err"]
    assert "Traceback" not in found["err"] and found["heavy"] == []
