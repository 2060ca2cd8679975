"""The suite's guard: a test that writes outside its temporary folders fails the run."""
import os
from types import SimpleNamespace

import conftest
import pytest
import tree_guard


def test_changes_lists_created_changed_and_deleted_files(tmp_path):
    (tmp_path / "kept.txt").write_text("a")
    (tmp_path / "edited.txt").write_text("a")
    (tmp_path / "removed.txt").write_text("a")
    (tmp_path / "__pycache__").mkdir()
    before = tree_guard.snapshot([str(tmp_path)])
    (tmp_path / "edited.txt").write_text("longer")
    (tmp_path / "removed.txt").unlink()
    (tmp_path / "log" / "demo").mkdir(parents=True)
    (tmp_path / "log" / "demo" / "config.yaml").write_text("x")
    (tmp_path / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")  # Python's own, not a test's
    after = tree_guard.snapshot([str(tmp_path), str(tmp_path / "missing")])
    assert tree_guard.changes(before, after) == [
        f"changed {tmp_path / 'edited.txt'}",
        f"created {tmp_path / 'log' / 'demo' / 'config.yaml'}",
        f"deleted {tmp_path / 'removed.txt'}",
    ]


def test_user_folders_are_the_tree_the_current_directory_and_the_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    folders = tree_guard.user_folders(str(tmp_path / "repo"))
    assert str(tmp_path / "repo") in folders and str(tmp_path) in folders
    assert str(tmp_path / "home" / ".cache" / "dcac-reid") in folders
    assert str(tmp_path / "home" / ".cache" / "huggingface") in folders


def test_session_hook_fails_a_run_that_wrote_into_the_users_tree(tmp_path, monkeypatch, capsys):
    repo, home = tmp_path / "repo", tmp_path / "home"
    repo.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(repo)
    monkeypatch.setattr(conftest, "REPO_ROOT", str(repo))
    session = SimpleNamespace(config=SimpleNamespace(), exitstatus=pytest.ExitCode.OK)
    conftest.pytest_sessionstart(session)
    conftest.pytest_sessionfinish(session, pytest.ExitCode.OK)
    assert session.exitstatus == pytest.ExitCode.OK  # nothing touched
    os.makedirs(home / ".cache" / "dcac-reid")
    (home / ".cache" / "dcac-reid" / "tiny.json").write_text("{}")
    conftest.pytest_sessionfinish(session, pytest.ExitCode.OK)
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    assert f"created {home / '.cache' / 'dcac-reid' / 'tiny.json'}" in capsys.readouterr().out
