"""The module paths of dcac-reid 0.1's flat layout, kept working for one release.

Version 0.1 had its modules side by side at the root of ``dcac_plugin`` (``dcac_plugin.checkpoint``,
``dcac_plugin.launcher``, ``dcac_plugin.config``...). They now live in folders by concern (see
README.md, Architecture). Importing an old path still works and gives the new module, with a
:class:`DeprecationWarning` naming the new path; the old paths go in the next release. A module
that was split in two (``config``, ``validation``, ``paper_configs``) answers with a stand-in
that finds each name in the new modules that hold it.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Dict, Optional, Sequence, Tuple

PACKAGE = "dcac_plugin"
# old path below dcac_plugin -> the new module(s) holding what it held, the main one first
MOVED: Dict[str, Tuple[str, ...]] = {
    "atomic_files": ("dcac_plugin.utils.atomic_files",),
    "checkpoint": ("dcac_plugin.utils.checkpoint",),
    "classical_configs": ("dcac_config.generators.classical",),
    "conditioning": ("dcac_plugin.diffusion.conditioning",),
    "config": ("dcac_config.loading", "dcac_config.defaults", "dcac_config.errors", "dcac_config.shipped",
               "dcac_plugin.engines.toolbox_kwargs"),
    "cpu_convolution": ("dcac_plugin.speed.cpu_convolution",),
    "data.layouts": ("dcac_config.layouts",),
    "determinism": ("dcac_plugin.run.determinism",),
    "device_check": ("dcac_plugin.benchmarks.device_check",),
    "diffusion.fused_lora": ("dcac_plugin.speed.fused_lora",),
    "distributed": ("dcac_plugin.utils.distributed",),
    "errors": ("dcac_config.errors",),
    "experiments": ("dcac_plugin.tools.experiments",),
    "export": ("dcac_plugin.tools.export",),
    "extract": ("dcac_plugin.tools.extract",),
    "file_kinds": ("dcac_plugin.utils.file_kinds",),
    "hub": ("dcac_plugin.utils.hub",),
    "inference": ("dcac_plugin.tools.inference",),
    "launcher": ("dcac_plugin.run.launcher",),
    "optim": ("dcac_plugin.run.optim",),
    "outputs": ("dcac_plugin.tools.outputs",),
    "paper_configs": ("dcac_config.generators.paper", "dcac_config.generators.rendering",
                      "dcac_config.generators.protocols"),
    "performance": ("dcac_plugin.speed.performance",),
    "preparation": ("dcac_plugin.utils.preparation",),
    "protocols": ("dcac_config.generators.protocols",),
    "released_configs": ("dcac_config.generators.released",),
    "resumption": ("dcac_plugin.run.resumption",),
    "rng": ("dcac_plugin.utils.rng",),
    "run_lock": ("dcac_config.run_folder.run_lock",),
    "run_settings": ("dcac_config.run_settings",),
    "save_dir": ("dcac_config.run_folder.save_dir",),
    "shipped": ("dcac_config.shipped",),
    "stats": ("dcac_plugin.benchmarks.stats",),
    "stopped_runs": ("dcac_config.run_folder.stopped_runs",),
    "swap": ("dcac_plugin.utils.swap",),
    "toolbox_configs": ("dcac_config.generators.toolbox",),
    "validation": ("dcac_plugin.run.validation", "dcac_config.values"),
    "visualize": ("dcac_plugin.tools.visualize",),
    "visualize.cli": ("dcac_plugin.tools.visualize.cli",),
    "visualize.curves": ("dcac_plugin.tools.visualize.curves",),
    "visualize.gradcam": ("dcac_plugin.tools.visualize.gradcam",),
    "visualize.ranked": ("dcac_plugin.tools.visualize.ranked",),
    "writable": ("dcac_plugin.utils.writable",),
}


def _warn(old: str, new: Sequence[str], stacklevel: int = 3) -> None:
    where = new[0] if len(new) == 1 else " and ".join(new)
    warnings.warn(f"{old} is deprecated: use {where} (dcac-reid's layout by concern; the old path goes in the "
                  "next release).", DeprecationWarning, stacklevel=stacklevel)


def _holder(targets: Sequence[str], name: str) -> Optional[types.ModuleType]:
    """The first of ``targets`` (imported) that holds ``name``, or None."""
    for target in targets:
        module = importlib.import_module(target)
        if hasattr(module, name):
            return module
    return None


class _SplitModule(types.ModuleType):
    """An old module whose names now live in several modules: each attribute looked up in turn."""

    def __init__(self, name: str, targets: Tuple[str, ...]) -> None:
        super().__init__(name, f"Deprecated: moved to {', '.join(targets)}.")
        self.__targets = targets

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        holder = _holder(self.__targets, attribute)
        if holder is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {attribute!r} "
                                 f"(it moved to {', '.join(self.__targets)})")
        return getattr(holder, attribute)

    def __dir__(self):
        return sorted({name for target in self.__targets for name in dir(importlib.import_module(target))})


class _OldPathLoader(importlib.abc.Loader):
    def __init__(self, old: str, targets: Tuple[str, ...]) -> None:
        self.old, self.targets = old, targets

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        _warn(self.old, self.targets, stacklevel=8)
        if len(self.targets) == 1:
            module = importlib.import_module(self.targets[0])  # the module itself: one object, patchable
            self.own_spec = module.__spec__  # the import system sets __spec__ to the old path's: put it back
            return module
        return _SplitModule(self.old, self.targets)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run (the new module is imported already) but to give it its own spec back."""
        if len(self.targets) == 1:
            module.__spec__ = self.own_spec


class _OldPathFinder(importlib.abc.MetaPathFinder):
    """Finds ``dcac_plugin.<old path>``, ahead of the regular finders: below an old package path
    (``dcac_plugin.visualize``, the new package itself) they would find the new package's files and
    load them a second time under the old name."""

    def find_spec(self, fullname: str, path=None, target=None) -> Optional[importlib.machinery.ModuleSpec]:
        prefix = PACKAGE + "."
        if not fullname.startswith(prefix) or fullname[len(prefix):] not in MOVED:
            return None
        targets = MOVED[fullname[len(prefix):]]
        return importlib.machinery.ModuleSpec(fullname, _OldPathLoader(fullname, targets),
                                              is_package=fullname[len(prefix):] == "visualize")


def install_old_paths() -> None:
    """Let the old module paths be imported (idempotent)."""
    if not any(isinstance(finder, _OldPathFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OldPathFinder())  # before the path finders: an old package path must not load its files again


def moved_attribute(module: str, name: str, targets: Sequence[str]):
    """For a module's ``__getattr__``: ``name`` that moved from ``module`` to one of ``targets``,
    with a DeprecationWarning; AttributeError when none holds it."""
    holder = _holder(targets, name)
    if holder is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    _warn(f"{module}.{name}", [f"{holder.__name__}.{name}"])
    return getattr(holder, name)


__all__ = ["MOVED", "install_old_paths", "moved_attribute"]
