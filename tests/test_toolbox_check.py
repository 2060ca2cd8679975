"""The torchreid check at ``import dcac_plugin``: the installed torchreid passes; a missing, too
old or unknown one is refused with one line naming what is supported (``dcac: error:`` under ``dcac``)."""
import ast
import os
import subprocess
import sys
from types import ModuleType

import pytest
import torchreid

from dcac_plugin.toolbox_check import REQUIRED, SUPPORTED, ToolboxError, check_toolbox, import_toolbox

PLUGIN = os.path.dirname(os.path.abspath(sys.modules["dcac_plugin"].__file__))


def test_the_installed_torchreid_passes():
    check_toolbox(torchreid)  # PyPI torchreid here and in CI; upstream deep-person-reid in its own environment


def fake_toolbox(version: str, pypi: bool = True, missing=()) -> ModuleType:
    """A torchreid module tree holding every attribute dcac_plugin reaches (placeholders), less ``missing``."""
    top = ModuleType("torchreid")
    top.__version__ = version
    if pypi:
        top.reid = ModuleType("torchreid.reid")
    for dotted in REQUIRED:
        if dotted in missing:
            continue
        *path, leaf = dotted.split(".")
        parent = top
        for name in path:
            if not hasattr(parent, name):
                setattr(parent, name, ModuleType(f"{parent.__name__}.{name}"))
            parent = getattr(parent, name)
        setattr(parent, leaf, object())
    return top


@pytest.mark.parametrize("version, pypi", [("0.2.5", True), ("0.3.0", True), ("1.4.0", False), ("1.4.0.dev0", False)])
def test_supported_layouts_pass(version, pypi):
    check_toolbox(fake_toolbox(version, pypi))


REFUSED = {
    "PyPI below 0.2.5": (fake_toolbox("0.2.4"), "version 0.2.4 (modules under torchreid.reid) is older than 0.2.5"),
    "source below 1.4.0": (fake_toolbox("1.3.6", pypi=False),
                           "version 1.3.6 (modules directly under torchreid) is older than 1.4.0"),
    "PyPI number without torchreid.reid": (fake_toolbox("0.2.5", pypi=False), "is older than 1.4.0"),
    "no version": (fake_toolbox("", pypi=False), "its torchreid.__version__ is missing"),
    "moved model factory": (fake_toolbox("1.4.0", pypi=False, missing=("models.__model_factory",)),
                            "lacks torchreid.models.__model_factory (a layout we do not know)"),
    "moved engine and dataset table": (fake_toolbox("0.3.0", missing=("engine.Engine", "data.datasets.__image_datasets")),
                                       "lacks torchreid.data.datasets.__image_datasets, torchreid.engine.Engine"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_toolboxes_are_refused_in_one_line(case):
    toolbox, expected = REFUSED[case]
    with pytest.raises(ToolboxError) as refused:
        check_toolbox(toolbox)
    message = str(refused.value)
    assert isinstance(refused.value, ImportError)
    assert expected in message and message.endswith(SUPPORTED) and "\n" not in message


def test_a_missing_torchreid_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchreid", None)  # `import torchreid` now fails as if not installed
    with pytest.raises(ToolboxError, match=r"^torchreid is not installed\. .*pip install 'torchreid>=0\.2\.5'"):
        import_toolbox()


@pytest.fixture
def old_torchreid_path(tmp_path):
    """A folder holding a PyPI-style torchreid 0.2.4 (a torchreid.reid package, nothing else)."""
    package = tmp_path / "site" / "torchreid"
    (package / "reid").mkdir(parents=True)
    (package / "__init__.py").write_text("from torchreid import reid\n__version__ = '0.2.4'\n")
    (package / "reid" / "__init__.py").write_text("")
    return str(tmp_path / "site")


def run_with_path(code: str, path: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=path)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_import_refuses_an_old_torchreid_first_in_the_path(old_torchreid_path, tmp_path):
    done = run_with_path("import dcac_plugin", old_torchreid_path, tmp_path)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1
    assert last.startswith("dcac_plugin.toolbox_check.ToolboxError: Unsupported torchreid at "
                           + os.path.join(old_torchreid_path, "torchreid", "__init__.py"))
    assert "version 0.2.4" in last and last.endswith(SUPPORTED)


def test_dcac_shows_the_refusal_as_its_error_line(old_torchreid_path, tmp_path):
    done = run_with_path("import sys, dcac_cli; sys.exit(dcac_cli.main(['stats', '--config-file', 'demo_baseline']))",
                         old_torchreid_path, tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("dcac: error: Unsupported torchreid at ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_a_command_that_needs_no_model_answers_whatever_torchreid_is_installed(old_torchreid_path, tmp_path):
    """`dcac config` imports neither torchreid nor dcac_plugin (dcac_cli.answers): it prints the config."""
    done = run_with_path("import sys, dcac_cli; sys.exit(dcac_cli.main(['config']))", old_torchreid_path, tmp_path)
    assert done.returncode == 0 and "engine:" in done.stdout and done.stderr == ""


def toolbox_aliases(tree: ast.Module) -> dict:
    """Names bound by ``from torchreid import X [as Y]`` in a module: {Y: X}."""
    return {alias.asname or alias.name: alias.name for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "torchreid" for alias in node.names}


def toolbox_paths_used(path: str):
    """The torchreid attribute paths a module's code reaches through those names, e.g. data.ImageDataset."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    aliases = toolbox_aliases(tree)
    for node in ast.walk(tree):
        names = []
        while isinstance(node, ast.Attribute):
            names.insert(0, node.attr)
            node = node.value
        if names and isinstance(node, ast.Name) and node.id in aliases:
            yield ".".join([aliases[node.id]] + names)


def covered(used: str) -> bool:
    return any(used == name or used.startswith(name + ".") or name.startswith(used + ".") for name in REQUIRED)


def test_the_check_covers_every_torchreid_attribute_the_code_reaches():
    sources = [os.path.join(folder, name) for folder, _, names in os.walk(PLUGIN) for name in names
               if name.endswith(".py")]
    used = {(os.path.relpath(path, PLUGIN), dotted) for path in sources for dotted in toolbox_paths_used(path)}
    assert len(used) > 20  # the scan sees the code's uses at all
    assert [entry for entry in sorted(used) if not covered(entry[1])] == []
