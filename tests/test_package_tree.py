"""Old import paths still work after the package tree moved, and name the very same modules."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from ausil_search.compat import MOVED


@pytest.mark.parametrize("old,new", sorted(MOVED.items()))
def test_old_and_new_names_are_one_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_documented_imports_and_submodules_of_moved_packages():
    from ausil_search.engine import SearchEngine
    from ausil_search.search.engine import SearchEngine as New
    import ausil_search.stores.segment_store as old_store
    import ausil_search.search.stores.segment_store as new_store
    from ausil_search import augment, weights

    assert SearchEngine is New
    assert old_store is new_store
    assert augment is importlib.import_module("ausil_search.media.augment")
    assert weights.tf_bundle is importlib.import_module("ausil_search.model.weights.tf_bundle")
    # The real module keeps its own name, so pickles and tracebacks name the new path.
    assert importlib.import_module("ausil_search.engine").__name__ == "ausil_search.search.engine"


def test_monkeypatching_either_name_is_seen_by_the_other(monkeypatch):
    import ausil_search.extraction as old
    from ausil_search.features import extraction as new

    monkeypatch.setattr(old, "INLINE_FRAMES_MAX", 7)
    assert new.INLINE_FRAMES_MAX == 7


@pytest.mark.parametrize("name", ["ausil_search.nothing", "ausil_search.stores.nothing", "ausil_search.engine.nothing"])
def test_unknown_names_still_fail(name):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)


def test_old_names_import_first_in_a_fresh_interpreter():
    # Before anything else imported the new names: no second copy of a moved package's submodule.
    code = ("import sys, ausil_search.stores.lock as a, ausil_search.search.stores.lock as b; "
            "assert a is b; assert sum(m is a for m in sys.modules.values()) == 2; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
