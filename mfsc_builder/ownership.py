"""Which folders an mfsc command may write into or replace: its own outputs, and nothing it reads; and the one
reader of a build's marker and summary, ``build_info.json``.

Why: a build, a merge or a publish dry run replaces its earlier results, and a user's folder may hold anything
else (a thesis, code, another tool's ``images/``). A folder is recognised as ours only by a marker the command
itself wrote (``build_info.json`` or ``work/manifest.json`` for a build or merge, ``DRY_RUN_MARKER`` for a dry
run); any other non-empty folder is refused before any work, naming it. An output that is one of the inputs,
lies inside one or holds one is refused too, so a command never reads what it writes or deletes its source.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fsad_data.atomic import leftovers
from fsad_data.folder_lock import FolderInUse, lock_beside
from mfsc_builder.errors import BuildError
from mfsc_builder.image_files import IMAGE_MODES
from mfsc_builder.store import MANIFEST_NAME

BUILD_INFO_NAME = "build_info.json"
WORK_DIR = "work"
DRY_RUN_MARKER = ".mfsc-dry-run"
LEGACY_LOCK_NAME = ".lock"  # the lock build (in work/) and import-official kept inside OUT before `holding`


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_apart(out: Path, inputs: Iterable[Path], option: str = "--out") -> None:
    """Refuse an output folder that is an input, lies inside one, or contains one."""
    o = Path(out).resolve()
    for i in inputs:
        r = Path(i).resolve()
        if _inside(o, r):
            raise BuildError(f"{option} {out} is {'the same folder as' if o == r else 'inside'} the input {i}; "
                             "write the output to a folder outside it")
        if _inside(r, o):
            raise BuildError(f"the input {i} lies inside {option} {out}; write the output to a folder "
                             "outside the inputs")


def is_build_output(folder: Path) -> bool:
    """True for a folder an ``mfsc build`` or ``mfsc merge`` wrote (its markers), also one killed mid-run."""
    folder = Path(folder)
    work = folder / WORK_DIR
    # a build killed while it made its work folder leaves that folder's temporary (``WorkStore.open``); one killed
    # at its start by an earlier version of this project, the lock file it kept inside
    killed_at_start = bool(leftovers(work)) or (work / LEGACY_LOCK_NAME).is_file()
    return (folder / BUILD_INFO_NAME).is_file() or (work / MANIFEST_NAME).is_file() or killed_at_start


def check_build_output(out: Path, command: str = "mfsc build") -> None:
    """Refuse a non-empty ``out`` that is not an earlier output of ``mfsc build`` / ``mfsc merge``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not is_build_output(out):
        raise BuildError(f"--out {out} is not empty and is not an earlier mfsc build or merge output "
                         f"(no {BUILD_INFO_NAME} or {WORK_DIR}/{MANIFEST_NAME}); {command} never replaces "
                         "files it did not write: choose an empty or new folder")


@contextmanager
def holding(out: Path, command: str) -> Iterator[None]:
    """Hold the lock beside ``out`` (``fsad_data.folder_lock.lock_beside``) while an mfsc command writes it: the one
    lock of an mfsc output folder (``mfsc build``, ``merge``, ``import-official``, ``publish --dry-run``, ``demo-data``
    via the same file), so any second run into it, of the same command or another, is refused at once."""
    lock = lock_beside(out)
    try:
        lock.acquire()
    except FolderInUse as exc:
        raise BuildError(f"{out} is in use by another run (lock {exc.lock_file}); wait for it to finish, or give "
                         f"`{command}` another folder") from None
    try:
        yield
    finally:
        lock.release()


def check_dry_run_output(out: Path) -> None:
    """Refuse a non-empty ``out`` that is not an earlier ``mfsc publish --dry-run`` folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BuildError(f"--dry-run {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / DRY_RUN_MARKER).is_file():
        raise BuildError(f"--dry-run {out} is not empty and is not an earlier dry run (no {DRY_RUN_MARKER}); "
                         "it is never replaced: choose an empty or new folder")


_INFO_TYPES: dict[str, type] = {"config": dict, "skipped": list, "schema_version": int, "num_shards": int,
                                "shard_index": int, "base_fingerprint": str, "classes": list, "image_storage": str}


def read_build_info(folder: Path, required: Iterable[str] = (), *, must_exist: bool = True) -> dict[str, Any]:
    """``folder/build_info.json``, its known keys type-checked and ``required`` ones present; ``{}`` for a
    missing file unless ``must_exist``. Anything wrong is one line naming the file (never a traceback)."""
    path = Path(folder) / BUILD_INFO_NAME
    fix = "rebuild it with mfsc build (or mfsc merge) into that folder"
    if not path.is_file():
        if must_exist:
            raise BuildError(f"{path} not found: {folder} is not a finished `mfsc build` output; finish that "
                             "build first")
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BuildError(f"{path} is unreadable ({type(exc).__name__}: {str(exc)[:120]}); {fix}") from None
    if not isinstance(info, dict):
        raise BuildError(f"{path} holds a {type(info).__name__}, not the build's summary object; {fix}")
    for key in required:
        if key not in info:
            raise BuildError(f"{path}: key {key!r} is missing; {fix}")
    for key, kind in _INFO_TYPES.items():
        if key in info and (not isinstance(info[key], kind) or isinstance(info[key], bool)):
            raise BuildError(f"{path}: key {key!r} must be a {kind.__name__}, not {info[key]!r:.40}; {fix}")
    if info.get("image_storage", "embed") not in IMAGE_MODES:
        raise BuildError(f"{path}: image_storage {info['image_storage']!r:.40} is not one of "
                         f"{', '.join(IMAGE_MODES)}; {fix}")
    return info


def image_storage(info: Mapping[str, Any]) -> str:
    """How a build keeps its images (``mfsc build --images``); builds made before the option embedded them."""
    return str(info.get("image_storage", "embed"))
