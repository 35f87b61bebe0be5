"""The model store: one directory per trained version, written whole before anything names it.

A version is saved into a hidden temporary directory beside its final place, flushed to disk, then
renamed (atomic on one filesystem). So a directory a ``ModelVersion`` row points at is always complete,
and a worker killed mid-save leaves only a ``.tmp-*`` directory, removed by the project's next training.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from active_learning.tagger import Tagger

TEMP_PREFIX = ".tmp-"


def project_dir(model_store: Path, project_id: int) -> Path:
    return model_store / f"project-{project_id}"


def attempt_name(job_id: int, token: str) -> str:
    """The directory name of a training attempt's model: the job, then the attempt's token."""
    return f"job-{job_id}-{token[:12]}"


def save_atomically(tagger: Tagger, directory: Path, name: str, also: Callable[[Path], None] | None = None) -> Path:
    """Save ``tagger`` as ``directory/name``, all or nothing; returns the final path. ``also`` writes
    more files into the (still temporary) directory before it is renamed: the ONNX export and its check."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    temp = directory / f"{TEMP_PREFIX}{name}"
    shutil.rmtree(temp, ignore_errors=True)
    tagger.save(temp)
    if also is not None:
        also(temp)
    _fsync_tree(temp)
    os.rename(temp, final)
    _fsync(directory)
    return final


def remove_leftovers(directory: Path, keep: Iterable[str]) -> list[Path]:
    """Remove what earlier attempts left in a project's directory: temporary directories and models
    no version points at (``keep``: the paths versions point at). Run while the project's one
    training runs, so nothing removed can still be in use."""
    keep = {str(Path(p)) for p in keep}
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        if path.is_dir() and path.name.removeprefix(TEMP_PREFIX).startswith("job-") and str(path) not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(root)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
