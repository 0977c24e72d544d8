"""The F1-max thresholds of an evaluation (``threshold.json``): written by ``detector eval`` with its other outputs,
read by ``detector predict --threshold`` and the Python API.

Why here and not in the checkpoint: an evaluation must not write into the checkpoint it reads (a read-only or
shared model folder, a Hub snapshot); the thresholds belong to the evaluation that picked them, on the test split,
for inspection only. The file names the checkpoint it was picked for (its weights' SHA-256), so a threshold
is never applied to another model by mistake.

``auto`` (``detector predict``, the Python API, ``detector export``) needs no file copied by hand. It takes, in
this order: a ``threshold.json`` inside the checkpoint folder (placed there by a user or a Hub upload); the
thresholds of the checkpoint's latest evaluation, which ``detector eval`` records in the checkpoint's
``evaluation.json`` beside its summary; a ``threshold.json`` beside the folder (a benchmark cell:
``cell/threshold.json`` next to ``cell/checkpoint/``). ``PATH`` takes an evaluation folder or its file. An
explicit image threshold (``detector predict --image-threshold``, the API's ``image_threshold=``) replaces the
evaluation's image threshold or adds one to a number / none (``image_threshold_in_force``): the image decision is
the caller's, the pixel threshold and resolution stay. This module is the one place that decides; every reader
calls ``resolve_threshold`` or ``find_thresholds``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from detector.errors import DetectorError
from detector.method.scoring import DEFAULT_BRANCH
from detector.store.checkpoint import CONFIG_FILE
from detector.store.model_card import EVALUATION_FILE, read_evaluations
from detector.store.schemas import THRESHOLD_FILE as THRESHOLD_ENTRIES
from detector.store.schemas import ThresholdEntry, check, read_json, read_threshold_file

THRESHOLD_FILE = "threshold.json"


@dataclass
class Thresholds:
    """Pixel threshold for masks; image threshold for the decision column (from an evaluation only)."""

    pixel: float | None
    image: float | None
    resolution: int | None
    source: str


def threshold_record(branch: str, metrics: dict[str, Any], resolution: int, class_name: str,
                     checkpoint_sha256: str | None) -> dict[str, Any]:
    """The content of an evaluation's threshold.json (one branch: the one evaluated)."""
    def num(key: str) -> float | None:
        v = metrics.get(key)
        return None if v is None or not math.isfinite(float(v)) else float(v)

    return {branch: {
        "pixel_threshold": num("pixel_f1_threshold"),
        "image_threshold": num("image_f1_threshold"),
        "pixel_f1_max": num("pixel_f1_max"),
        "image_f1_max": num("image_f1_max"),
        "resolution": int(resolution),
        "checkpoint_sha256": checkpoint_sha256,
        "source": f"F1-max on the test split of {class_name} (detector eval); for inspection only",
    }}


def checkpoint_sha256(ckpt_dir: Path) -> str | None:
    """The weights' SHA-256 recorded in a checkpoint's config.json (None when it records none)."""
    data = read_json(Path(ckpt_dir) / CONFIG_FILE, "retrain or restore the checkpoint")
    sha = data.get("weights_sha256") if isinstance(data, dict) else None
    return sha if isinstance(sha, str) else None


def read_entry(path: Path, branch: str, ckpt_sha: str | None) -> ThresholdEntry | None:
    """``branch``'s checked entry of a threshold file; None when the file holds no such branch. An entry picked
    for another checkpoint is refused."""
    entry = read_threshold_file(path).get(branch)
    return None if entry is None else _of_checkpoint(entry, path, ckpt_sha)


def _of_checkpoint(entry: ThresholdEntry, where: Path, ckpt_sha: str | None) -> ThresholdEntry:
    """``entry``, unless it names other weights than the checkpoint's (then one line saying what to do)."""
    if ckpt_sha and entry.checkpoint_sha256 and entry.checkpoint_sha256 != ckpt_sha:
        raise DetectorError(f"{where} was picked for another checkpoint (its weights differ); evaluate this "
                            "checkpoint with `detector eval`, or pass --threshold FLOAT")
    return entry


def _as_thresholds(entry: ThresholdEntry, path: Path, branch: str) -> Thresholds:
    """An evaluation's thresholds; an image-level one (no masks) has an image threshold only: images are then
    decided, and no mask or region is drawn."""
    if entry.pixel_threshold is None and entry.image_threshold is None:
        raise DetectorError(f"{path} has no threshold for branch {branch!r} (that evaluation had no anomalous "
                            "image); pass --threshold FLOAT")
    return Thresholds(entry.pixel_threshold, entry.image_threshold, entry.resolution, f"file ({path})")


def resolve_threshold(spec: str | float | Path | None, ckpt_dir: Path, branch: str = DEFAULT_BRANCH,
                      image: str | float | None = None) -> Thresholds:
    """``--threshold``: none, a number, auto (the checkpoint's or its benchmark cell's threshold.json), or the path
    of an evaluation folder / threshold.json; ``image`` (``--image-threshold``), when given, is the image
    threshold in force (``image_threshold_in_force``)."""
    found = _resolve(spec, ckpt_dir, branch)
    if image is None:
        return found
    value = image_threshold_in_force(image, found.image)
    return replace(found, image=value, source=f"{found.source}; image threshold {value:.6g} given")


def image_threshold_in_force(given: str | float | None, current: float | None = None,
                             name: str = "--image-threshold") -> float | None:
    """The image threshold that decides ``anomalous``: one given explicitly over the evaluation's ``current``
    (why: an engineer picks the image threshold in the report's explorer and runs predict with it, with or
    without the evaluation's pixel threshold); a value that is not a finite number is refused."""
    if given is None:
        return current
    try:
        value = float(str(given).strip())
    except ValueError:
        value = math.nan
    if isinstance(given, bool) or not math.isfinite(value):
        raise DetectorError(f"{name} {str(given)!r} is not a finite number; pass the image score at or above "
                            "which an image is anomalous (e.g. the report's image threshold)")
    return value


def _resolve(spec: str | float | Path | None, ckpt_dir: Path, branch: str) -> Thresholds:
    """``resolve_threshold`` without an explicit image threshold."""
    if spec is None or str(spec).lower() == "none":
        return Thresholds(None, None, None, "none")
    text = str(spec)
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if not math.isfinite(value):
            raise DetectorError(f"--threshold {text!r} is not a finite number")
        return Thresholds(value, None, None, "value")
    ckpt_dir = Path(ckpt_dir)
    if text.lower() == "auto":
        found = find_thresholds(ckpt_dir, branch)
        if found is None:
            raise DetectorError(f"no evaluation of {ckpt_dir} is recorded for branch {branch!r}: run `detector eval "
                                f"--checkpoint {ckpt_dir} --data DATA --out EVAL` (it records its thresholds in "
                                "the checkpoint for --threshold auto), or pass --threshold EVAL / FLOAT / none")
        return _as_thresholds(*found, branch)
    sha = checkpoint_sha256(ckpt_dir) if (ckpt_dir / CONFIG_FILE).is_file() else None
    path = Path(text)
    if path.is_dir():
        path = path / THRESHOLD_FILE
    if not path.is_file():
        raise DetectorError(f"--threshold {text!r}: use auto, none, a number, or an evaluation folder / "
                            f"{THRESHOLD_FILE} (from `detector eval`)")
    entry = read_entry(path, branch, sha)
    if entry is None:
        raise DetectorError(f"{path} has no threshold for branch {branch!r}; run `detector eval --branch {branch}` "
                            "or pass --threshold FLOAT")
    return _as_thresholds(entry, path, branch)


def find_thresholds(ckpt_dir: Path, branch: str = DEFAULT_BRANCH) -> tuple[ThresholdEntry, Path] | None:
    """What ``auto`` takes for the checkpoint folder (the order is in the module docstring), and the file it came
    from; None when no evaluation of this checkpoint is found. An entry picked for another checkpoint inside the
    folder is refused; beside it, only an evaluation of this very checkpoint counts."""

    ckpt_dir = Path(ckpt_dir)
    sha = checkpoint_sha256(ckpt_dir) if (ckpt_dir / CONFIG_FILE).is_file() else None
    inside = ckpt_dir / THRESHOLD_FILE
    if inside.is_file() and (entry := read_entry(inside, branch, sha)) is not None:
        return entry, inside
    recorded = read_evaluations(ckpt_dir).get(branch) if (ckpt_dir / EVALUATION_FILE).is_file() else None
    if isinstance(recorded, dict) and isinstance(recorded.get("thresholds"), dict):
        index = ckpt_dir / EVALUATION_FILE
        entry = check(THRESHOLD_ENTRIES, {branch: recorded["thresholds"]}, str(index),
                      "run `detector eval` again or pass --threshold FLOAT")[branch]
        return _of_checkpoint(entry, index, sha), index
    beside = ckpt_dir.parent / THRESHOLD_FILE
    if beside.is_file() and sha and (entry := read_entry(beside, branch, sha)) is not None \
            and entry.checkpoint_sha256 == sha:
        return entry, beside
    return None


def stored_thresholds(folder: Path, branch: str = DEFAULT_BRANCH) -> dict[str, Any] | None:
    """What ``auto`` finds for FOLDER (``find_thresholds``) as a plain dict (the Python API), or None."""
    found = find_thresholds(Path(folder), branch)
    return None if found is None else found[0].model_dump()
