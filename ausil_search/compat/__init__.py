"""Old import paths: the modules that moved into the package tree, under their former names.

`ausil_search.engine` and `ausil_search.search.engine` are the same module object (so monkeypatching
either name works), and a moved package's submodules follow it (`ausil_search.stores.lock` is
`ausil_search.search.stores.lock`). The table is the only place that knows the old names; new code
imports the new ones. `training` and `backbone_training` are the re-exports of the training API from
before `train/` existed.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "ausil_search.audio": "ausil_search.media.audio",
    "ausil_search.scan": "ausil_search.media.scan",
    "ausil_search.media_sources": "ausil_search.media.sources",
    "ausil_search.media_writer": "ausil_search.media.writer",
    "ausil_search.augment": "ausil_search.media.augment",
    "ausil_search.spectrogram": "ausil_search.features.spectrogram",
    "ausil_search.backbone": "ausil_search.features.backbone",
    "ausil_search.extraction": "ausil_search.features.extraction",
    "ausil_search.scratch": "ausil_search.features.scratch",
    "ausil_search.head": "ausil_search.model.head",
    "ausil_search.weights": "ausil_search.model.weights",
    "ausil_search.engine": "ausil_search.search.engine",
    "ausil_search.stores": "ausil_search.search.stores",
    "ausil_search.dedup": "ausil_search.search.dedup",
    "ausil_search.decision": "ausil_search.search.decision",
    "ausil_search.report_html": "ausil_search.search.report_html",
    "ausil_search.evaluation": "ausil_search.evaluate.metrics",
    "ausil_search.release": "ausil_search.evaluate.release",
    "ausil_search.formats": "ausil_search.evaluate.formats",
    "ausil_search.benchmark": "ausil_search.evaluate.benchmark",
    "ausil_search.training": "ausil_search.compat.training",
    "ausil_search.backbone_training": "ausil_search.compat.backbone_training",
}


def new_name(name: str) -> str | None:
    """The current name of module `name` if it is (or lies under) a moved one, else None."""
    head, _, rest = name.partition(".")
    while True:
        if head in MOVED:
            return MOVED[head] + ("." + rest if rest else "")
        if not rest:
            return None
        part, _, rest = rest.partition(".")
        head = f"{head}.{part}"


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return None  # a placeholder that exec_module swaps for the real module

    def exec_module(self, module) -> None:
        # The import system returns sys.modules[old name] after exec_module, so the old name binds the
        # real module itself rather than a copy; its own __spec__ and __name__ stay the new ones.
        sys.modules[module.__name__] = importlib.import_module(self.target)


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves an old module name to the moved module; other names go to the next finder."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith("ausil_search."):
            return None
        target_name = new_name(fullname)
        if target_name is None:
            return None
        try:
            found = importlib.util.find_spec(target_name)
        except ModuleNotFoundError:  # a submodule of a plain module
            found = None
        if found is None:
            return None  # so `ausil_search.stores.nothing` fails as ModuleNotFoundError under its own name
        return importlib.util.spec_from_loader(fullname, _AliasLoader(target_name))


def install() -> None:
    """Puts the finder first on sys.meta_path (once), ahead of the file-system finder, so that a moved
    package's submodule is never loaded a second time under its old name."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
