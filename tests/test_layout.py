"""The package's layout: folders by concern, imports one way, user errors from one leaf base class,
0.1's module paths still importable (with a DeprecationWarning), and a run folder written before
the move still used."""
from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import pkgutil
import sys
import warnings
from typing import Dict, List, Set

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("dcac_config", "dcac_cli", "dcac_plugin")
FIXTURE_RUN = os.path.join(REPO, "tests", "fixtures", "run_0.1.0")

# Lowest first: a module may import its own layer or a lower one, never a higher one.
LAYERS = [
    ("configuration, dataset layouts, run folders, errors (no torch)",
     ["dcac_config", "dcac_cli.base", "dcac_cli.choices", "dcac_cli.overrides", "dcac_cli.parser", "dcac_cli.runs"]),
    ("shared helpers", ["dcac_plugin.utils", "dcac_plugin.registry", "dcac_plugin.toolbox_check",
                        "dcac_plugin.moved"]),
    ("data, models, losses, metrics, speed", ["dcac_plugin.data", "dcac_plugin.models", "dcac_plugin.losses",
                                              "dcac_plugin.evaluation", "dcac_plugin.speed"]),
    ("the diffusion branch", ["dcac_plugin.diffusion"]),
    ("engines", ["dcac_plugin.engines"]),
    ("the run", ["dcac_plugin.run", "dcac_plugin.registration"]),
    ("benchmarks", ["dcac_plugin.benchmarks"]),
    ("tools on trained runs", ["dcac_plugin.tools"]),
    ("the command line", ["dcac_cli"]),
    ("entry points", ["dcac_plugin.cli", "dcac_plugin"]),
]


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix naming ``module``."""
    best, rank = "", -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, index
    assert rank >= 0, f"{module} is in no layer of LAYERS"
    return rank


def module_files() -> Dict[str, str]:
    """{module name: file} of our three packages."""
    found = {}
    for package in PACKAGES:
        for folder, dirs, names in os.walk(os.path.join(REPO, package)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    found[module[:-len(".__init__")] if module.endswith(".__init__") else module] = path
    return found


def imports_of(module: str, path: str, modules: Set[str]) -> Set[str]:
    """Our modules that ``module`` imports, anywhere in its file (in functions too)."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
            targets.update(name if name in modules else base for name in names)
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
    return {target for target in targets if target in modules and target != module}


@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
    files = module_files()
    return {module: imports_of(module, path, set(files)) for module, path in files.items()}


def test_the_package_root_holds_about_ten_modules():
    root = sorted(name for name in os.listdir(os.path.join(REPO, "dcac_plugin")) if name.endswith(".py"))
    assert len(root) <= 10, root
    folders = {name for name in os.listdir(os.path.join(REPO, "dcac_plugin"))
               if os.path.isfile(os.path.join(REPO, "dcac_plugin", name, "__init__.py"))}
    assert {"benchmarks", "data", "diffusion", "engines", "losses", "models", "run", "speed", "tools", "utils"} <= folders


def test_every_module_is_in_a_layer_and_the_scan_sees_the_imports(graph):
    assert len(graph) > 80
    assert "dcac_plugin.utils.checkpoint" in graph["dcac_plugin.run.launcher"]  # relative imports resolved
    assert "dcac_config.errors" in graph["dcac_plugin.run.launcher"]
    for module in graph:
        layer_of(module)


def test_imports_run_one_way(graph):
    upward = sorted(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
                    for module, targets in graph.items() for target in targets
                    if layer_of(target) > layer_of(module)
                    and not module.startswith(target + "."))  # a module's own package __init__ runs first anyway
    assert upward == []


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles(graph):
    # A package's __init__ importing its own submodules is how packages export; leave those edges out.
    edges = {module: {t for t in targets if not t.startswith(module + ".")} for module, targets in graph.items()}
    assert cycles(edges) == []


def test_the_circle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_dcac_config_needs_only_the_standard_library_yaml_and_yacs():
    third_party = set()
    for module, path in module_files().items():
        if not module.startswith("dcac_config"):
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Import):
                third_party.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                third_party.add(node.module.split(".")[0])
    assert third_party - set(sys.stdlib_module_names) - {"__future__", "dcac_config"} == {"yaml", "yacs"}


def test_the_errors_module_is_a_leaf_and_every_error_class_derives_from_its_base():
    from dcac_config import errors

    tree = ast.parse(inspect.getsource(errors))
    assert [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and n.module != "__future__"] == []
    import dcac_plugin  # noqa: F401  (every module importable below)

    classes = []
    for module in module_files():
        if module.startswith("dcac_plugin.benchmarks.device_check"):
            continue  # runs by path on the GPU machine; its errors are steps' results
        loaded = importlib.import_module(module)
        classes += [obj for name, obj in vars(loaded).items() if inspect.isclass(obj) and issubclass(obj, Exception)
                    and obj.__module__ == module and not name.startswith("_")]
    assert len(classes) >= 10
    assert [cls.__qualname__ for cls in classes if not issubclass(cls, errors.UserError)] == []
    # Ctrl-C and SIGTERM stay signals: `except Exception` must not catch them.
    assert not issubclass(errors.Interrupted, Exception) and not issubclass(errors.Terminated, Exception)


OLD_PATHS = {  # 0.1's paths the README showed, and a few more of the flat layout
    "dcac_plugin.checkpoint": ("load_encoder", "dcac_plugin.utils.checkpoint"),
    "dcac_plugin.launcher": ("run", "dcac_plugin.run.launcher"),
    "dcac_plugin.experiments": ("load_paper_results", "dcac_plugin.tools.experiments"),
    "dcac_plugin.visualize.curves": ("read_scalars", "dcac_plugin.tools.visualize.curves"),
    "dcac_plugin.errors": ("ConfigError", "dcac_config.errors"),
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_an_old_path_gives_the_new_module_with_a_deprecation_warning(old):
    import dcac_plugin  # noqa: F401

    name, new = OLD_PATHS[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: use {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)  # one module, not a copy: patching one patches both
    assert module.__spec__.name == new  # the new module keeps its own spec
    assert hasattr(module, name)


def test_a_split_old_module_finds_each_name_where_it_went():
    import dcac_plugin  # noqa: F401

    sys.modules.pop("dcac_plugin.config", None)
    with pytest.warns(DeprecationWarning, match="dcac_plugin.config is deprecated"):
        from dcac_plugin.config import build_config, get_default_config, imagedata_kwargs
    from dcac_config.defaults import get_default_config as moved_defaults
    from dcac_config.loading import build_config as moved_build
    from dcac_plugin.engines.toolbox_kwargs import imagedata_kwargs as moved_kwargs

    assert (build_config, get_default_config, imagedata_kwargs) == (moved_build, moved_defaults, moved_kwargs)
    with pytest.raises(ImportError, match="no_such_name"):
        from dcac_plugin.config import no_such_name  # noqa: F401


def test_the_cli_module_still_answers_its_old_names():
    from dcac_plugin import cli
    from dcac_plugin.tools.commands import cmd_train

    with pytest.warns(DeprecationWarning, match="dcac_plugin.cli.cmd_train is deprecated"):
        assert cli.cmd_train is cmd_train
    with pytest.raises(AttributeError):
        cli.no_such_command


def test_every_new_module_imports_without_old_paths():
    """No module of ours goes through an old path (it would warn in every user's run)."""
    import dcac_plugin

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for info in pkgutil.walk_packages(dcac_plugin.__path__, "dcac_plugin."):
            if info.name != "dcac_plugin.benchmarks.device_check":
                importlib.import_module(info.name)


def test_a_run_folder_written_by_0_1_is_used_as_it_is(tmp_path):
    """tests/fixtures/run_0.1.0: a one-epoch demo baseline run written by dcac-reid 0.1 (before the
    move): its config, encoder and checkpoint load, and dcac extract works on it."""
    import torch
    from PIL import Image

    from dcac_config.loading import build_config
    from dcac_plugin.cli import main
    from dcac_plugin.tools.inference import load_trained_model
    from dcac_plugin.utils.checkpoint import load_checkpoint, load_encoder

    cfg = build_config(os.path.join(FIXTURE_RUN, "config.yaml"))
    assert (cfg.engine, cfg.model.name) == ("baseline", "clip_vit_tiny")
    state = load_checkpoint(os.path.join(FIXTURE_RUN, "model", "latest.pth.tar"))
    assert state["epoch"] == 1 and "backbone.conv1.weight" in state["state_dict"]
    model, _, used = load_trained_model(FIXTURE_RUN)
    batch = torch.rand(2, 3, cfg.data.height, cfg.data.width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model(batch)
        assert features.shape[0] == 2 and torch.isfinite(features).all()
        # The encoder file holds the same trained weights as the checkpoint the run ended with.
        torch.nn.init.zeros_(model.backbone.conv1.weight)
        load_encoder(model, os.path.join(FIXTURE_RUN, "encoder.safetensors"))
        assert torch.allclose(model(batch), features, atol=1e-6)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 128), (120, 30, 200)).save(images / "a.jpg")
    out = tmp_path / "features.safetensors"
    assert main(["extract", FIXTURE_RUN, str(images), "--output", str(out)]) == 0
    with open(os.path.join(FIXTURE_RUN, "results.json"), encoding="utf-8") as handle:
        assert json.load(handle)["engine"] == "baseline"
    assert out.is_file()


def test_docs_architecture_names_every_module_and_the_readme_every_folder():
    """The Architecture pages stay true: docs/architecture.md names each module's file, README.md
    each folder of the packages."""
    with open(os.path.join(REPO, "docs", "architecture.md"), encoding="utf-8") as handle:
        detail = handle.read()
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    files = module_files()
    unnamed = sorted(path for module, path in files.items()
                     if os.path.basename(path) != "__init__.py" and os.path.basename(path) not in detail)
    assert unnamed == []
    folders = {os.path.relpath(os.path.dirname(path), REPO) for path in files.values()}
    assert sorted(folder for folder in folders if os.path.basename(folder) + "/" not in readme) == []
