"""The detector's own output folders: their format tags, the JSON it writes, the one rule for "may I replace OUT",
and the lock that holds an output for one run.

Every command that replaces a folder whole (train, eval, predict, benchmark, export, push --dry-run) declares
its ``OwnOutput`` (the file that marks it, how to recognise one) and asks ``check_replaceable`` before any work:
a new or empty folder, or one this command wrote, is replaced; a file or a user's folder never is, and the line
says which file was looked for. The format tags (``"format"`` in the marking JSON) are named here, once.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.errors import DetectorError
from detector.store.schemas import read_json
from fsad_data.folder_lock import FolderInUse, lock_beside

CHECKPOINT_FORMAT = "finegrained-ad-checkpoint"
EVALUATION_FORMAT = "finegrained-ad-evaluation"
PREDICTIONS_FORMAT = "finegrained-ad-predictions"
BENCHMARK_FORMAT = "finegrained-ad-benchmark"
EXPORT_FORMAT = "finegrained-ad-export"
SCORES_CSV = "scores.csv"  # per image scores: written by eval (test split) and predict (new images)
DEFECTS_JSON = "defects.json"  # per image named defects: eval and predict


@dataclass(frozen=True)
class OwnOutput:
    """A kind of folder a command writes: ``what`` names it in messages ("an evaluation of `detector eval`"),
    ``mark`` is the file that says a folder is one, ``recognise`` decides it (a folder -> bool)."""

    what: str
    mark: str
    recognise: Callable[[Path], bool]


def check_replaceable(out: str | Path, kind: OwnOutput, flag: str = "--out") -> None:
    """Refuse, before any work, an ``out`` this command may not replace: a file, or a non-empty folder that is
    not ``kind`` (its mark file missing or not this tool's)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise DetectorError(f"{flag} {out} is a file; give a folder name")
    if any(out.iterdir()) and not kind.recognise(out):
        raise DetectorError(f"{flag} {out} is not empty and is not {kind.what} (no {kind.mark}); it is never "
                            f"replaced: choose another {flag} or empty it")


def has_format(path: Path, tag: str, older_keys: frozenset[str] = frozenset()) -> bool:
    """Whether the JSON file ``path`` carries ``"format": tag`` (or, for files written before the tag existed,
    every key of ``older_keys``)."""

    try:
        data = read_json(path, "")
    except DetectorError:
        return False
    return isinstance(data, dict) and (data.get("format") == tag or bool(older_keys) and older_keys <= set(data))


def json_safe(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively, so every JSON file written is strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@contextmanager
def output_lock(out: str | Path, command: str = "detector train", name: str | None = None) -> Iterator[None]:
    """Hold ``out`` for one run (``fsad_data.folder_lock`` on ``.NAME.lock`` beside it, released by the OS even
    on kill -9): a second run into the same folder is refused at once, naming ``command`` and the lock, instead
    of both claiming to have written it. ``name``: another lock beside ``out`` (one shard of a benchmark)."""
    out = Path(out)
    lock = lock_beside(out, name)
    try:
        lock.acquire()
    except FolderInUse as exc:
        raise DetectorError(f"{out} is in use by another run (lock {exc.lock_file}); wait for it to finish, or "
                            f"give `{command}` another --out") from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def naming_folder(out: str | Path) -> Iterator[None]:
    """An ``OSError`` that names no file (a library's own write on a full disk; ``fsad_data.atomic`` names its
    files itself) raised inside is raised again naming ``out``, the folder being written, so the CLI's line says
    where: "No space left on device: OUT; check that path ..."."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
        raise
