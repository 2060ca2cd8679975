"""A config file that cannot be used says so in one line naming the file (and the line), exit 2.

yaml.safe_load raises multi-line errors (a traceback through ``dcac``), decodes only UTF-8,
keeps the last of two equal keys without a word and returns None for an empty file; each case
here goes through ``dcac config --config-file`` and checks the one line it prints.
"""
from __future__ import annotations

import pytest

from dcac_config.loading import build_config, load_config_file
from dcac_plugin.cli import main


def config_error(capsys, path) -> str:
    """The message ``dcac config --config-file path`` fails with, after checking how it fails."""
    code = main(["config", "--config-file", str(path)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith("dcac: error: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    return captured.err[len("dcac: error: "):].rstrip("\n")


def write(tmp_path, text: str, name: str = "cfg.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    path = write(tmp_path, "train:\n  lr: 0.1\n   max_epoch: 2\n")
    assert config_error(capsys, path) == (
        f"Config file {path} is not valid YAML at line 3, column 13: mapping values are not allowed here. Fix the "
        "file there (YAML indents with spaces; quote values holding ': ' or '#').")


def test_unclosed_list_is_reported_where_yaml_gives_up(tmp_path, capsys):
    path = write(tmp_path, "data:\n  sources: [market1501\n")
    message = config_error(capsys, path)
    assert message.startswith(f"Config file {path} is not valid YAML at line 3, column 1: expected ',' or ']'")


def test_file_that_is_not_utf8_is_named(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_bytes("train:\n  lr: 0.1\n".encode("utf-16"))  # as some editors save "Unicode"
    assert config_error(capsys, path) == (
        f"Config file {path} is not UTF-8 text (byte 0xff at offset 0); name a YAML file, saved as UTF-8.")


def test_utf8_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes("\ufefftrain:\n  lr: 0.1\n".encode("utf-8"))
    assert build_config(str(path)).train.lr == 0.1


def test_a_folder_given_as_the_config_is_named(tmp_path, capsys):
    assert config_error(capsys, tmp_path) == (
        f"Config file {tmp_path} is a folder; name a YAML file (e.g. one in that folder), or a shipped config "
        "(`dcac configs` lists them).")


@pytest.mark.parametrize("text", ["", "\n\n", "# every setting commented out\n# train:\n#   lr: 0.1\n"])
def test_empty_file_is_refused_with_the_way_to_defaults(tmp_path, capsys, text):
    path = write(tmp_path, text)
    assert config_error(capsys, path) == (
        f"Config file {path} is empty (or holds only comments). Put KEY: VALUE lines in it, or leave out "
        "--config-file to use the defaults.")


def test_an_explicit_empty_mapping_is_the_defaults(tmp_path):
    assert build_config(str(write(tmp_path, "{}\n"))) == build_config(None)


@pytest.mark.parametrize("text,key,lines", [
    ("train:\n  lr: 0.1\n  max_epoch: 3\n  lr: 0.2\n", "train.lr", (2, 4)),
    ("train:\n  lr: 0.1\nmodel:\n  name: osnet_x1_0\ntrain:\n  max_epoch: 2\n", "train", (1, 5)),
    ("dcac:\n  pcl:\n    temperature: 0.1\n    temperature: 0.2\n", "dcac.pcl.temperature", (3, 4)),
])
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path, capsys, text, key, lines):
    path = write(tmp_path, text)
    assert config_error(capsys, path) == (
        f"Config file {path} sets {key!r} twice (lines {lines[0]} and {lines[1]}); only the last would count. "
        "Keep one of them.")


def test_merge_keys_may_still_be_overridden(tmp_path):
    text = "common: &common\n  lr: 0.1\n  max_epoch: 3\n"
    _, loaded = load_config_file(str(write(tmp_path, text + "train:\n  <<: *common\n  lr: 0.2\n")))
    assert loaded["train"] == {"lr": 0.2, "max_epoch": 3}


@pytest.mark.parametrize("text,kind", [("- train\n- model\n", "list"), ("just a sentence\n", "str"), ("42\n", "int")])
def test_top_level_that_is_not_a_mapping_is_refused(tmp_path, capsys, text, kind):
    path = write(tmp_path, text)
    assert config_error(capsys, path) == f"Config file {path} must hold a YAML mapping of keys, not {kind}."


def test_python_tags_are_refused_as_yaml_errors(tmp_path, capsys):
    path = write(tmp_path, "train: !!python/object/apply:os.system ['true']\n")
    message = config_error(capsys, path)
    assert message.startswith(f"Config file {path} is not valid YAML at line 1, column 8: could not determine a "
                              "constructor for the tag")
