"""Converting an index to this version's format (`ausil-search index --rebuild`): the same files
extracted again into a new index beside the old one, then swapped in with one atomic directory
exchange (two renames where the filesystem cannot exchange), so an interruption at any point
leaves either the old index or the finished new one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from ..atomic import exchange_paths
from ..errors import IndexStoreError
from ..model import AuSiLModel, load_model
from ..progress import Progress, silent
from .engine import (INDEX_FORMAT_VERSION, MANIFEST_ATTRIBUTE, MANIFEST_NAME, SEGMENTS_DIR, IndexReport,
                     SearchEngine)
from .stores import SegmentStore, WriterLock


RETIRED_MARK = ".retired"  # in an index directory: it is being (or was) swapped out by a rebuild


def staging_dir(index_dir: Path) -> Path:
    """Where `rebuild_index` builds the new index: beside the old one (one filesystem, so it can be swapped in)."""
    return index_dir.parent / f".{index_dir.name}.rebuild"


def _retired_dir(index_dir: Path) -> Path:
    return index_dir.parent / f".{index_dir.name}.retired"


def finish_interrupted_swap(index_dir: Path) -> None:
    """Complete a swap of plain renames (where the filesystem cannot exchange directories) that a
    crash cut between its two renames: the index directory is missing and the new one is ready."""
    staging, retired = staging_dir(index_dir), _retired_dir(index_dir)
    if not index_dir.exists() and staging.is_dir() and retired.is_dir():
        os.rename(staging, index_dir)


def _swap_in(index_dir: Path, staging: Path) -> None:
    """Put the finished index at `staging` in the place of `index_dir` atomically, then delete the old one.

    The old directory is marked retired first, so that if a crash leaves it at the staging path
    (after the exchange) the next rebuild discards it instead of resuming from it; it is renamed
    out of the way before it is deleted, so that a crash while deleting leaves no half index there.
    """
    (index_dir / RETIRED_MARK).touch()
    retired = _retired_dir(index_dir)
    shutil.rmtree(retired, ignore_errors=True)
    if exchange_paths(staging, index_dir):
        os.rename(staging, retired)
    else:
        os.rename(index_dir, retired)
        os.rename(staging, index_dir)  # a crash just before this is finished by `finish_interrupted_swap`
    shutil.rmtree(retired, ignore_errors=True)


def _recorded_manifest(index_dir: Path, store: SegmentStore) -> dict:
    """The manifest of an index of any format version, as recorded (not validated): {} when lost."""
    recorded = store.get_attribute(MANIFEST_ATTRIBUTE)
    if isinstance(recorded, dict):
        return recorded
    try:
        manifest = json.loads((index_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _built_by(index_dir: Path, model: AuSiLModel) -> bool:
    """Whether a (partly built) index of this format version was started with `model`."""
    try:
        manifest = json.loads((index_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and manifest.get("format_version") == INDEX_FORMAT_VERSION
            and (manifest.get("model") or {}).get("sha256") == model.sha256)


def _model_for_rebuild(index_dir: Path, spec: AuSiLModel | str | Path | None, recorded: dict) -> AuSiLModel:
    """The given model, else the one that built the index (its recorded file, or the default if that is it)."""
    if isinstance(spec, AuSiLModel):
        return spec
    if spec is not None:
        return load_model(spec)
    built = recorded.get("model") or {}
    path = Path(built.get("path") or "")
    if built.get("path") and path.is_file():
        candidate = AuSiLModel.load(path)
        if candidate.sha256 == built.get("sha256"):
            return candidate
    default = load_model(None)
    if not built or default.sha256 == built.get("sha256"):
        return default
    raise IndexStoreError(
        f"{index_dir} was built with model {built.get('identity')}, whose file is not at {built.get('path')}: "
        "pass --model with that file (or with another model to rebuild the index with it)"
    )


def rebuild_index(
    index_dir: Path,
    model: AuSiLModel | str | Path | None = None,
    *,
    progress: Progress = silent,
    before_swap: Callable[[Path, Path], None] = lambda old, new: None,
    **engine_options,
) -> IndexReport:
    """Extract every file of an index (of any format version) again into a new index of this
    format, with the same paths and ids, and swap it in. `progress` hears of the stages of
    `SearchEngine.refill` (`scan`, `index`).

    The new index is built beside the old one (`staging_dir`) while the old one stays usable; a
    rerun after an interruption or a crash resumes it. Only when it is complete does one atomic
    directory exchange put it in place. Files that are gone or unusable now are reported in
    `skipped` and left out. `before_swap(old, new)` copies what layers above the engine keep in the
    index directory (the CLI: dedup decisions) into the finished new index. The old index's writer
    lock is held throughout.
    """
    index_dir = Path(index_dir)
    finish_interrupted_swap(index_dir)
    store_dir = index_dir / SEGMENTS_DIR
    if not (store_dir / "data.mdb").is_file():
        raise IndexStoreError(f"no index at {index_dir}: nothing to rebuild")
    with WriterLock(store_dir):
        (index_dir / RETIRED_MARK).unlink(missing_ok=True)  # a swap that did not happen
        shutil.rmtree(_retired_dir(index_dir), ignore_errors=True)  # an old index a crash left half deleted
        with SegmentStore(store_dir, readonly=True, any_version=True) as old:
            recorded = _recorded_manifest(index_dir, old)
            records = [(record.id, record.path) for record in old.iter_records()]
        chosen = _model_for_rebuild(index_dir, model, recorded)
        same_model = chosen.sha256 == (recorded.get("model") or {}).get("sha256")
        staging = staging_dir(index_dir)
        if staging.exists() and ((staging / RETIRED_MARK).exists() or not _built_by(staging, chosen)):
            shutil.rmtree(staging)  # the old index of a finished rebuild, or a start with another model
        engine_options.setdefault("pooling", recorded.get("pooling") if same_model else None)
        with SearchEngine(staging, chosen, writable=True, **engine_options) as engine:
            report = engine.refill(records, progress)
        if not report.interrupted:
            before_swap(index_dir, staging)
            _swap_in(index_dir, staging)
    return report
