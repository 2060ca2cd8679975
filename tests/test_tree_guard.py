"""The suite's guard: a test that writes outside its temporary folders fails the run, and the
session's HOME and caches are a temporary folder, so that libraries' files do not land in the user's."""
import os
import subprocess
import sys
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
    for variable in ("XDG_CACHE_HOME", "DCAC_CACHE", "HF_HOME", "TORCH_HOME"):  # the session sets some
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    folders = tree_guard.user_folders(str(tmp_path / "repo"))
    assert str(tmp_path / "repo") in folders and str(tmp_path) in folders
    assert str(tmp_path / "home") in folders  # the whole HOME, not only the caches below
    assert str(tmp_path / "home" / ".cache" / "dcac-reid") in folders
    assert str(tmp_path / "home" / ".cache" / "huggingface") in folders


def test_session_hook_fails_a_run_that_wrote_into_the_users_tree(tmp_path, monkeypatch, capsys):
    repo, home = tmp_path / "repo", tmp_path / "home"
    repo.mkdir()
    monkeypatch.setattr(conftest, "USER_HOME", str(home))  # the user's HOME, remembered before the session's
    monkeypatch.setattr(conftest, "USER_ENVIRON", {})
    monkeypatch.chdir(repo)
    monkeypatch.setattr(conftest, "REPO_ROOT", str(repo))
    config = SimpleNamespace(getoption=lambda name, default=None: default)
    session = SimpleNamespace(config=config, exitstatus=pytest.ExitCode.OK)
    conftest.pytest_sessionstart(session)
    conftest.pytest_sessionfinish(session, pytest.ExitCode.OK)
    assert session.exitstatus == pytest.ExitCode.OK  # nothing touched
    os.makedirs(home / ".cache" / "dcac-reid")
    (home / ".cache" / "dcac-reid" / "tiny.json").write_text("{}")
    conftest.pytest_sessionfinish(session, pytest.ExitCode.OK)
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    assert f"created {home / '.cache' / 'dcac-reid' / 'tiny.json'}" in capsys.readouterr().out
    (home / ".onnxruntime-like").write_text("x")  # anywhere in HOME, not only the known caches
    conftest.pytest_sessionfinish(session, pytest.ExitCode.OK)
    assert f"created {home / '.onnxruntime-like'}" in capsys.readouterr().out


def test_a_file_anywhere_in_a_home_is_reported_what_is_no_tests_doing_is_not(tmp_path):
    home = tmp_path / "home"
    (home / "project" / ".git").mkdir(parents=True)
    (home / "python").mkdir()
    folders = tree_guard.user_folders(str(home / "project"), str(home), {})
    skipped = [str(home / "python")]
    before = tree_guard.snapshot(folders, skipped)
    written = [home / ".cache" / "Microsoft" / "DeveloperTools" / ".onnxruntime" / "deviceid",
               home / ".cache" / "matplotlib" / "fontlist-v3.11.0.json", home / ".config" / "matplotlib" / "rc",
               home / "notes.txt", home / "project" / "log" / "run.txt"]
    for path in written + [home / "project" / ".git" / "index", home / "python" / "site-packages" / "new.py"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert tree_guard.changes(before, tree_guard.snapshot(folders, skipped)) == [f"created {path}" for path in
                                                                                sorted(map(str, written))]


def test_a_root_inside_a_skipped_folder_is_still_walked_and_each_file_seen_once(tmp_path):
    (tmp_path / "venv" / "repo").mkdir(parents=True)
    (tmp_path / "venv" / "repo" / "a.txt").write_text("x")
    (tmp_path / "venv" / "b.txt").write_text("x")
    roots = [str(tmp_path), str(tmp_path / "venv" / "repo"), str(tmp_path / "venv" / "repo")]
    assert tree_guard.snapshot(roots, [str(tmp_path / "venv")]).keys() == {str(tmp_path / "venv" / "repo" / "a.txt")}


def test_skipped_folders_are_the_python_installation_the_temporary_folders_and_the_named_ones(tmp_path):
    environ = {tree_guard.SKIP_VARIABLE: os.pathsep.join([str(tmp_path / "editor"), str(tmp_path / "browser")])}
    skipped = tree_guard.skipped_folders(environ, basetemp=str(tmp_path / "basetemp"))
    assert {sys.prefix, sys.base_prefix, str(tmp_path / "editor"), str(tmp_path / "browser"),
            str(tmp_path / "basetemp")} <= set(skipped)
    assert str(conftest.USER_HOME) not in skipped and conftest.REPO_ROOT not in skipped


def test_the_guard_watches_the_users_real_home_not_the_sessions():
    assert conftest.USER_HOME == os.path.realpath(conftest.USER_ENVIRON["HOME"])
    # conftest imported once: a second import would take the first session's HOME for the user's
    assert "dcac-tests-" not in conftest.USER_HOME
    assert conftest.USER_HOME in conftest.guarded_folders()
    assert os.environ["HOME"] not in conftest.guarded_folders()


def test_the_session_home_and_library_caches_are_inside_the_session_folder():
    import huggingface_hub
    import matplotlib
    import torch

    session = conftest.SESSION_DIR + os.sep
    for variable in ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR"):
        assert os.environ[variable].startswith(session), variable
        assert os.environ[variable] != conftest.USER_ENVIRON.get(variable)
    assert os.path.expanduser("~") != conftest.USER_HOME
    # Read when these libraries were imported or are used: the redirection came first.
    for folder in (matplotlib.get_cachedir(), matplotlib.get_configdir(), torch.hub.get_dir(),
                   huggingface_hub.constants.HF_HUB_CACHE):
        assert folder.startswith(session), folder


def test_subprocesses_inherit_the_session_home_and_keep_the_users_user_site():
    import site

    out = subprocess.run([sys.executable, "-c", "import os, site; print(os.environ['HOME']); print(site.getuserbase())"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    # the user base derived from the user's HOME, as before the session moved HOME
    users = conftest.USER_ENVIRON.get("PYTHONUSERBASE") or os.path.join(conftest.USER_ENVIRON["HOME"], ".local")
    assert out == [os.environ["HOME"], users] and site.getuserbase() == users


def test_redirect_home_is_undone_by_restore_environment(tmp_path):
    saved = dict(os.environ)
    try:
        tree_guard.redirect_home(str(tmp_path))
        assert os.environ["HOME"] == str(tmp_path / "home") and os.path.isdir(tmp_path / "home")
        assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "home" / ".config" / "matplotlib")
        assert "TORCH_HOME" not in os.environ and "HF_HOME" not in os.environ
    finally:
        tree_guard.restore_environment(saved)
    assert dict(os.environ) == saved
